package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// restCall sends a JSON (or raw) request to the gateway and returns the
// status, headers and body.
func restCall(t *testing.T, client *http.Client, method, url string, body []byte, headers map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, res.Header, data
}

// signature is what `openssl dgst -sha256 -hmac` computes in the README.
func signature(secret, ts string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// TestWebhookDeploymentThroughGateway deploys examples/order-webhook.json
// over REST, triggers it by webhook unsigned and signed, finds the
// executions in the history over REST and reads one over gRPC.
func TestWebhookDeploymentThroughGateway(t *testing.T) {
	t.Parallel()
	st := startStack(t)
	client := http1(t)
	example, err := os.ReadFile("../examples/order-webhook.json")
	if err != nil {
		t.Fatal(err)
	}

	code, _, body := restCall(t, client, http.MethodPost, st.url+"/api/v1/workflow/deployments", example, nil)
	if code != http.StatusOK {
		t.Fatalf("deploy: %d %s", code, body)
	}
	var dep struct {
		DeploymentID string `json:"deployment_id"`
		Status       string `json:"status"`
		WebhookURL   string `json:"webhook_url"`
		CreatedAt    string `json:"created_at"`
	}
	if err := json.Unmarshal(body, &dep); err != nil || dep.DeploymentID == "" || dep.Status != "active" || dep.CreatedAt == "" {
		t.Fatalf("deploy response %s (%v)", body, err)
	}
	hookPath, _ := strings.CutPrefix(dep.WebhookURL, st.url+"/api/v1/webhooks/")
	if ns, path, _ := strings.Cut(hookPath, "/"); len(ns) != 32 || path != "orders/new" {
		t.Fatalf("webhook_url %q, want %s/api/v1/webhooks/<namespace>/orders/new", dep.WebhookURL, st.url)
	}
	// The same path again, in the same tenant, is a conflict.
	if code, _, body := restCall(t, client, http.MethodPost, st.url+"/api/v1/workflow/deployments", example, nil); code != http.StatusConflict {
		t.Fatalf("second deploy: %d %s", code, body)
	}

	// Unsigned: the deployment has no secret yet.
	order := []byte(`{"order_id": "A-1", "total": 250}`)
	code, hdr, body := restCall(t, client, http.MethodPost, dep.WebhookURL, order, nil)
	if code != http.StatusCreated || hdr.Get("X-Order-Priority") != "high" || hdr.Get("X-Flowgate-Execution-Id") == "" {
		t.Fatalf("unsigned webhook: %d %v %s", code, hdr, body)
	}
	var answer map[string]any
	if err := json.Unmarshal(body, &answer); err != nil || answer["priority"] != "high" || answer["order_id"] != "A-1" {
		t.Fatalf("webhook answer %s", body)
	}
	firstID := hdr.Get("X-Flowgate-Execution-Id")

	// Require signatures from now on.
	var update map[string]any
	if err := json.Unmarshal(example, &update); err != nil {
		t.Fatal(err)
	}
	const secret = "whsec-0123456789abcdef"
	update["triggers"].([]any)[0].(map[string]any)["secret"] = secret
	upd, _ := json.Marshal(update)
	if code, _, body := restCall(t, client, http.MethodPut, st.url+"/api/v1/workflow/deployments/"+dep.DeploymentID, upd, nil); code != http.StatusOK {
		t.Fatalf("update: %d %s", code, body)
	}
	small := []byte(`{"order_id": "B-2", "total": 40}`)
	code, _, body = restCall(t, client, http.MethodPost, dep.WebhookURL, small, nil)
	if code != http.StatusUnauthorized || !bytes.Contains(body, []byte(`"UNAUTHORIZED"`)) {
		t.Fatalf("unsigned to a signed webhook: %d %s", code, body)
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	signed := map[string]string{"X-Flowgate-Timestamp": ts, "X-Flowgate-Signature": signature(secret, ts, small), "Idempotency-Key": "order-B-2"}
	code, hdr, body = restCall(t, client, http.MethodPost, dep.WebhookURL, small, signed)
	if code != http.StatusOK || !bytes.Contains(body, []byte(`"priority":"normal"`)) {
		t.Fatalf("signed webhook: %d %s", code, body)
	}
	signedID := hdr.Get("X-Flowgate-Execution-Id")
	// The same signed request again is a replay.
	code, _, body = restCall(t, client, http.MethodPost, dep.WebhookURL, small, signed)
	if code != http.StatusUnauthorized || !bytes.Contains(body, []byte("already been used")) {
		t.Fatalf("replayed signature: %d %s", code, body)
	}
	// A retry signed afresh with the same key returns the same execution.
	// (a second before the first signature, which a slow run could
	// otherwise reach by the clock and so sign the same bytes)
	first, _ := strconv.ParseInt(signed["X-Flowgate-Timestamp"], 10, 64)
	ts = strconv.FormatInt(first-1, 10)
	resigned := map[string]string{"X-Flowgate-Timestamp": ts, "X-Flowgate-Signature": signature(secret, ts, small), "Idempotency-Key": "order-B-2"}
	if _, hdr, _ := restCall(t, client, http.MethodPost, dep.WebhookURL, small, resigned); hdr.Get("X-Flowgate-Execution-Id") != signedID {
		t.Fatalf("idempotent retry started %q, want %q", hdr.Get("X-Flowgate-Execution-Id"), signedID)
	}

	// The history has both, newest first.
	code, _, body = restCall(t, client, http.MethodGet, st.url+"/api/v1/executions?page=1&page_size=10&deployment_id="+dep.DeploymentID, nil, nil)
	var history struct {
		Executions []struct {
			ExecutionID string `json:"execution_id"`
			Status      string `json:"status"`
			TriggerType string `json:"trigger_type"`
		} `json:"executions"`
		TotalCount int `json:"total_count"`
		Page       int `json:"page"`
		PageSize   int `json:"page_size"`
	}
	if err := json.Unmarshal(body, &history); err != nil || code != http.StatusOK {
		t.Fatalf("history: %d %s", code, body)
	}
	if history.TotalCount != 2 || len(history.Executions) != 2 || history.Page != 1 || history.PageSize != 10 ||
		history.Executions[0].ExecutionID != signedID || history.Executions[1].ExecutionID != firstID ||
		history.Executions[0].TriggerType != "webhook" || history.Executions[0].Status != "succeeded" {
		t.Fatalf("history %s", body)
	}

	// Read it over gRPC.
	rt := runtimev1connect.NewWorkflowRuntimeServiceClient(h2c(t), st.url, connect.WithGRPC())
	res, err := rt.GetExecution(t.Context(), connect.NewRequest(&runtimev1.GetExecutionRequest{ExecutionId: firstID}))
	if err != nil {
		t.Fatal(err)
	}
	e := res.Msg.GetExecution()
	if e.GetStatus() != "succeeded" || e.GetDeploymentId() != dep.DeploymentID || len(e.GetNodeResults()) != 5 ||
		e.GetTriggerData().GetFields()["body"].GetStructValue().GetFields()["order_id"].GetStringValue() != "A-1" {
		t.Fatalf("gRPC GetExecution %v", e)
	}
	for _, nr := range e.GetNodeResults() {
		want := "succeeded"
		if nr.GetNodeId() == "accepted" {
			want = "skipped"
		}
		if nr.GetStatus() != want {
			t.Fatalf("node %s: %s, want %s", nr.GetNodeId(), nr.GetStatus(), want)
		}
	}
}
