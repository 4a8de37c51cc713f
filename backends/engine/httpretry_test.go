package engine_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// flakyServer counts requests per path; each path fails in its own way.
type flakyServer struct {
	*httptest.Server
	mu    sync.Mutex
	count map[string]int
}

func newFlakyServer(t *testing.T) *flakyServer {
	t.Helper()
	f := &flakyServer{count: map[string]int{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.count[r.URL.Path]++
		nth := f.count[r.URL.Path]
		f.mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		switch {
		case r.URL.Path == "/flaky" && nth <= 2, strings.HasPrefix(r.URL.Path, "/down"):
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
		case r.URL.Path == "/limited" && nth == 1:
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case r.URL.Path == "/later":
			w.Header().Set("Retry-After", "120")
			http.Error(w, "slow down", http.StatusTooManyRequests)
		case r.URL.Path == "/bad":
			http.Error(w, "bad", http.StatusBadRequest)
		default:
			_, _ = w.Write(body)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *flakyServer) calls(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[path]
}

func retryFlow(url string, retry map[string]any) *enginev1.WorkflowDefinition {
	return httpFlow(url, map[string]any{"method": "POST", "body": "payload", "retry": retry})
}

func TestHTTPRetry(t *testing.T) {
	t.Parallel()
	srv := newFlakyServer(t)
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})

	t.Run("5xx retried with backoff, body resent", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		res := execute(t, s, retryFlow(srv.URL+"/flaky", map[string]any{"max_attempts": 3, "backoff_ms": 50}), nil)
		out := nodeResult(t, res, "call").GetOutput().GetStructValue().AsMap()
		if res.GetStatus() != "succeeded" || out["attempts"] != 3.0 || out["body"] != "payload" {
			t.Fatalf("status %q output %v error %q", res.GetStatus(), out, res.GetError())
		}
		if time.Since(start) < 150*time.Millisecond {
			t.Fatalf("three attempts in %s: no backoff of 50ms then 100ms", time.Since(start))
		}
	})
	t.Run("429 waits for Retry-After", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		res := execute(t, s, retryFlow(srv.URL+"/limited", map[string]any{"backoff_ms": 10, "max_backoff_ms": 2000}), nil)
		if res.GetStatus() != "succeeded" || time.Since(start) < time.Second || srv.calls("/limited") != 2 {
			t.Fatalf("status %q after %s, %d calls", res.GetStatus(), time.Since(start), srv.calls("/limited"))
		}
	})
	t.Run("Retry-After beyond the cap ends the retries", func(t *testing.T) {
		t.Parallel()
		res := execute(t, s, retryFlow(srv.URL+"/later", map[string]any{"max_backoff_ms": 5000}), nil)
		if res.GetStatus() != "failed" || srv.calls("/later") != 1 || !strings.Contains(res.GetError(), "asked to retry after 2m0s") {
			t.Fatalf("status %q, %d calls, error %q", res.GetStatus(), srv.calls("/later"), res.GetError())
		}
	})
	t.Run("4xx not retried", func(t *testing.T) {
		t.Parallel()
		res := execute(t, s, retryFlow(srv.URL+"/bad", map[string]any{"backoff_ms": 10}), nil)
		if res.GetStatus() != "failed" || srv.calls("/bad") != 1 {
			t.Fatalf("status %q, %d calls", res.GetStatus(), srv.calls("/bad"))
		}
	})
	t.Run("attempts exhausted", func(t *testing.T) {
		t.Parallel()
		res := execute(t, s, retryFlow(srv.URL+"/down", map[string]any{"max_attempts": 2, "backoff_ms": 10}), nil)
		if res.GetStatus() != "failed" || srv.calls("/down") != 2 || !strings.Contains(res.GetError(), "HTTP 503 (attempt 2 of 2)") {
			t.Fatalf("status %q, %d calls, error %q", res.GetStatus(), srv.calls("/down"), res.GetError())
		}
	})
	t.Run("never past the run's deadline", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		res, err := executeErr(t.Context(), s, retryFlow(srv.URL+"/down/deadline", map[string]any{"backoff_ms": 2000}), nil, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "deadline comes before the next attempt") || time.Since(start) > 400*time.Millisecond {
			t.Fatalf("status %q after %s, error %q", res.GetStatus(), time.Since(start), res.GetError())
		}
	})
	t.Run("destination refused is not retried", func(t *testing.T) {
		t.Parallel()
		strict := newEngine(t, engine.Config{})
		start := time.Now()
		res := execute(t, strict, retryFlow(srv.URL+"/flaky", map[string]any{"backoff_ms": 1000}), nil)
		if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "destination not allowed") || time.Since(start) > 900*time.Millisecond {
			t.Fatalf("status %q after %s, error %q", res.GetStatus(), time.Since(start), res.GetError())
		}
	})
}

func TestHTTPRetryValidation(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	const field = "workflow_definition.nodes[1].parameters.retry"
	for _, tc := range []struct {
		retry any
		field string
	}{
		{"3", field},
		{map[string]any{"max_attempts": 0}, field + ".max_attempts"},
		{map[string]any{"max_attempts": 11}, field + ".max_attempts"},
		{map[string]any{"max_attempts": 2.5}, field + ".max_attempts"},
		{map[string]any{"backoff_ms": -1}, field + ".backoff_ms"},
		{map[string]any{"backoff_ms": 5000, "max_backoff_ms": 1000}, field + ".backoff_ms"},
		{map[string]any{"max_backoff_ms": 600000}, field + ".max_backoff_ms"},
		{map[string]any{"attempts": 3}, field + ".attempts"},
	} {
		_, err := executeErr(t.Context(), s, httpFlow("https://example.com", map[string]any{"retry": tc.retry}), nil, 0)
		assertViolation(t, err, tc.field)
	}
}
