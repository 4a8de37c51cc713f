package engine_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// exampleDefinition reads the workflow of a deployment body in examples/.
func exampleDefinition(t *testing.T, name string) *enginev1.WorkflowDefinition {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Definition json.RawMessage `json:"workflow_definition"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatal(err)
	}
	d := &enginev1.WorkflowDefinition{}
	if err := protojson.Unmarshal(body.Definition, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestExamplesAreValid(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	for _, name := range []string{"order-webhook.json", "order-batch.json"} {
		if _, err := validateOnly(t, s, exampleDefinition(t, name), 0); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestOrderBatchExample runs examples/order-batch.json against a local
// stand-in for its endpoints.
func TestOrderBatchExample(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		calls []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, r.URL.Path+" "+string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	t.Cleanup(srv.Close)
	d := exampleDefinition(t, "order-batch.json")
	raw, _ := protojson.Marshal(d)
	_ = protojson.Unmarshal([]byte(strings.ReplaceAll(string(raw), "https://httpbin.org", srv.URL)), d)
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	orders := []any{
		map[string]any{"order_id": "o-1", "sku": "A", "quantity": 2},
		map[string]any{"order_id": "o-2", "sku": "B", "quantity": 0},
		map[string]any{"order_id": "o-3", "sku": "C", "quantity": 5},
	}
	res := execute(t, s, d, map[string]any{"body": map[string]any{"batch_id": "b-9", "orders": orders}})
	if res.GetStatus() != "succeeded" {
		t.Fatalf("status %q: %s", res.GetStatus(), res.GetError())
	}
	ack := res.GetWebhookResponse()
	if ack.GetStatusCode() != 202 || ack.GetBody().GetStructValue().AsMap()["orders"] != 3.0 {
		t.Fatalf("ack %v", ack)
	}
	got, _ := json.Marshal(nodeResult(t, res, "reserve").GetOutput().AsInterface())
	if string(got) != `[{"order_id":"o-1","reserved":true},{"order_id":"o-3","reserved":true}]` {
		t.Fatalf("reservations %s", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 3 || !strings.HasPrefix(calls[2], `/anything/report {"batch_id":"b-9","reservations":[{"order_id":"o-1"`) || !strings.Contains(calls[2], `"totals":{"orders":3,"units":7}`) {
		t.Fatalf("calls %q", calls)
	}
}
