package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/flowgate/flowgate/backends"
)

// getProbe fetches a probe and decodes its JSON body.
func getProbe(tb testing.TB, url string) (int, probeBody) {
	tb.Helper()
	res, err := http1Client(tb).Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	var body probeBody
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
		tb.Fatalf("%s: %v", url, err)
	}
	return res.StatusCode, body
}

// TestProbesFollowUpstreams: /readyz is 200 while every upstream answers
// its health check and 503 naming the one that does not; /livez and the
// gateway's own gRPC health stay up either way.
func TestProbesFollowUpstreams(t *testing.T) {
	t.Parallel()
	var cfg Config
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{})
	_, up := startGateway(t, cfg)
	if status, body := getProbe(t, up+"/readyz"); status != http.StatusOK || body.Status != "ready" ||
		body.Upstreams["workflow.engine.v1.WorkflowEngineService"] != "serving" {
		t.Errorf("/readyz with upstreams up: %d %+v", status, body)
	}

	cfg.Engine = Upstream{Address: deadAddress(t)}
	_, down := startGateway(t, cfg)
	status, body := getProbe(t, down+"/readyz")
	if status != http.StatusServiceUnavailable || body.Status != "not_ready" ||
		body.Reason != "upstream not serving: workflow.engine.v1.WorkflowEngineService" ||
		body.Upstreams["workflow.agent.v1.WorkflowAgentService"] != "serving" {
		t.Errorf("/readyz with the engine down: %d %+v", status, body)
	}
	if status, body := getProbe(t, down+"/livez"); status != http.StatusOK || body.Status != "alive" {
		t.Errorf("/livez with the engine down: %d %+v", status, body)
	}
	res, err := grpchealth.NewClient(h2cClient(t), down, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil || res.Status != grpchealth.StatusServing {
		t.Errorf("gRPC health of the gateway with the engine down: %v %v", res, err)
	}
}

// TestReadyzWhileDraining: once shutdown begins, /readyz answers 503 for
// the drain delay while the gateway still serves everything else.
func TestReadyzWhileDraining(t *testing.T) {
	t.Parallel()
	var cfg Config
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{})
	cfg.DrainDelay = 3 * time.Second
	cfg.Security.BackendKey = testBackendKey
	_, url, cancel, done := serveLogged(t, cfg, 5*time.Second)
	if status, body := getProbe(t, url+"/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz before shutdown: %d %+v", status, body)
	}
	cancel()
	deadline := time.Now().Add(2 * time.Second)
	status, body := getProbe(t, url+"/readyz")
	for status != http.StatusServiceUnavailable && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		status, body = getProbe(t, url+"/readyz")
	}
	if status != http.StatusServiceUnavailable || body.Status != "not_ready" || !strings.Contains(body.Reason, "shutting down") {
		t.Errorf("/readyz while draining: %d %+v", status, body)
	}
	if status, _ := getProbe(t, url+"/livez"); status != http.StatusOK {
		t.Errorf("/livez while draining: %d", status)
	}
	res, err := grpchealth.NewClient(h2cClient(t), url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil || res.Status != grpchealth.StatusNotServing {
		t.Errorf("gRPC health while draining: %v %v", res, err)
	}
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}
