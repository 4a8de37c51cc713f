package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// collector is a fake OTLP/HTTP collector that keeps the span names it is
// sent, by service name.
type collector struct {
	mu    sync.Mutex
	spans map[string][]string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "bad export", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, span := range ss.GetSpans() {
				c.spans[service] = append(c.spans[service], span.GetName())
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(nil)
}

// TestTracesExportedAndFlushedOnShutdown runs the command with an OTLP
// endpoint in the environment, makes one call and shuts down before the
// exporter's batch is due: the call's spans reach the collector anyway.
// Not parallel: the exporter reads the process environment.
func TestTracesExportedAndFlushedOnShutdown(t *testing.T) {
	col := &collector{spans: map[string][]string{}}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	base, done := startRun(t, ctx, nil, os.Getenv)
	res, err := http.Get(base + "/api/v1/workflow/deployments")
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("list deployments: %d", res.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	const name = "workflow.runtime.v1.WorkflowRuntimeService/ListDeployments"
	// The gateway's server and client spans, and the embedded backend's.
	if got := col.spans["flowgate"]; len(got) != 3 || got[0] != name || got[1] != name || got[2] != name {
		t.Errorf("exported spans %v, want three %s spans of service flowgate", col.spans, name)
	}
}
