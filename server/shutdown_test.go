package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// serveLogged runs a gateway of cfg with the given shutdown timeout through
// Serve on a loopback port, its log kept in log; stop starts the shutdown
// and served says how Serve ended.
func serveLogged(t *testing.T, cfg Config, timeout time.Duration) (log *lockedBuffer, base string, stop context.CancelFunc, served <-chan error) {
	t.Helper()
	log = &lockedBuffer{}
	cfg.ShutdownTimeout = timeout
	cfg.Logger = slog.New(slog.NewJSONHandler(log, nil))
	gw, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gw.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ln) }()
	return log, "http://" + ln.Addr().String(), cancel, done
}

// Calls that outlive the shutdown timeout are cut, and the drain still
// succeeds: the log says what was cut, and Serve returns nil so that the
// process exits 0 rather than reporting "context deadline exceeded".
func TestShutdownCutsCallsPastTheTimeout(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	log, base, stop, served := serveLogged(t, b.cfg, 300*time.Millisecond)

	// Two slow calls in flight, on two connections: REST over HTTP/1.1
	// and Connect over HTTP/2.
	ended := make(chan error, 2)
	go func() {
		res, err := http1Client(t).Post(base+"/api/v1/workflow/execute", "application/json",
			strings.NewReader(`{"workflow_definition":{"name":"slow"}}`))
		if err == nil {
			res.Body.Close()
		}
		ended <- err
	}()
	go func() {
		c := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), base)
		_, err := c.ExecuteWorkflow(context.Background(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{
			WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "slow"},
		}))
		ended <- err
	}()
	b.engine.waitForCalls(t, 2)

	start := time.Now()
	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v, want nil after cutting what outlived the timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutting down took %v with a timeout of 300ms", d)
	}
	for range 2 {
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Fatal("a cut call never ended on the caller's side")
		}
	}
	cut := logEntryWith(t, log.String(), "cut")
	if cut == nil || cut["connections"] != 2.0 || cut["calls"] != 2.0 || cut["streams"] != 0.0 || cut["level"] != "WARN" {
		t.Errorf("log line about the cut: %v, want 2 connections and 2 calls cut; log:\n%s", cut, log.String())
	}
}

// A drain that finishes in time cuts nothing and says nothing about cuts.
func TestShutdownWithinTheTimeoutCutsNothing(t *testing.T) {
	t.Parallel()
	log, base, stop, served := serveLogged(t, startTestBackends(t).cfg, 0)
	res, err := http1Client(t).Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	stop()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if cut := logEntryWith(t, log.String(), "cut"); cut != nil {
		t.Errorf("a clean drain logged a cut: %v", cut)
	}
}

// logEntryWith returns the first JSON log entry whose message contains
// word, or nil.
func logEntryWith(t *testing.T, log, word string) map[string]any {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if msg, _ := entry["msg"].(string); strings.Contains(msg, word) {
			return entry
		}
	}
	return nil
}
