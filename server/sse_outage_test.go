package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
)

// streamError is the error event of a stream, decoded.
type streamError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// readOutage reads a whole stream answered while its upstream is down: the
// retry advice, then one error event, and nothing else.
func readOutage(t *testing.T, resp *http.Response) (retry string, ev streamError) {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the stream: %v", resp.Proto, err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("%s: %d %q, want 200 text/event-stream so that EventSource reconnects: %s",
			resp.Proto, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var data string
	for line := range strings.SplitSeq(string(body), "\n") {
		switch {
		case strings.HasPrefix(line, "retry: "):
			retry = strings.TrimPrefix(line, "retry: ")
		case strings.HasPrefix(line, "data: "):
			if data != "" {
				t.Fatalf("%s: more than one event: %s", resp.Proto, body)
			}
			data = strings.TrimPrefix(line, "data: ")
		}
	}
	if !strings.Contains(string(body), "event: error\n") {
		t.Fatalf("%s: no error event: %s", resp.Proto, body)
	}
	if err := json.Unmarshal([]byte(data), &ev); err != nil {
		t.Fatalf("%s: error event data %q: %v", resp.Proto, data, err)
	}
	return retry, ev
}

// An unreachable agent is an outage that passes: the stream routes answer
// 200 with retry advice and a retryable error event, so that EventSource
// keeps reconnecting instead of giving up on a 502.
func TestSSEUpstreamDownKeepsEventSourceReconnecting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		sse   SSEConfig
		retry string
	}{
		{"configured retry", SSEConfig{Retry: 1500 * time.Millisecond}, "1500"},
		{"no retry configured", SSEConfig{}, "3000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, base := startGateway(t, Config{
				Agent: Upstream{Address: deadAddress(t)}, Runtime: Upstream{Address: deadAddress(t)}, Engine: Upstream{Address: deadAddress(t)},
				SSE: tc.sse,
			})
			for _, client := range []*http.Client{http1Client(t), h2cClient(t)} {
				for _, path := range []string{"/api/v1/workflow_generation?session_id=s", "/api/v1/chat/stream?session_id=s&user_message=hi"} {
					retry, ev := readOutage(t, sseGet(t, client, base+path, nil))
					if retry != tc.retry || ev.Error.Code != "BAD_GATEWAY" || ev.Error.Message != "workflow agent is unavailable" {
						t.Errorf("%s: retry %q, error %+v; want retry %s and BAD_GATEWAY workflow agent is unavailable", path, retry, ev.Error, tc.retry)
					}
				}
			}
		})
	}
}

// What the caller got wrong stays an HTTP error while the upstream is
// down: EventSource must stop, not retry a request that cannot succeed.
func TestSSECallerErrorsStayHTTPErrorsDuringOutage(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) { c.Agent = Upstream{Address: deadAddress(t)} })
	for _, tc := range []struct {
		name   string
		path   string
		header http.Header
		status int
		code   string
	}{
		{"no credentials", "/api/v1/chat/stream?session_id=s&user_message=hi", nil, http.StatusUnauthorized, "UNAUTHORIZED"},
		{"repeated parameter", "/api/v1/chat/stream?session_id=s&session_id=t&user_message=hi", bearer(hsToken(t, nil)), http.StatusBadRequest, "VALIDATION_ERROR"},
		{"unknown parameter", "/api/v1/workflow_generation?session_id=s&nope=1", bearer(hsToken(t, nil)), http.StatusBadRequest, "VALIDATION_ERROR"},
	} {
		status, body := secSSEGet(t, f.url+tc.path, tc.header)
		var got streamError
		if err := json.Unmarshal([]byte(body), &got); err != nil || status != tc.status || got.Error.Code != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.name, status, body, tc.status, tc.code)
		}
	}
	// With credentials, the same stream reaches the dead upstream.
	status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id=s&user_message=hi", bearer(hsToken(t, nil)))
	if status != http.StatusOK || !strings.Contains(body, `"code":"BAD_GATEWAY"`) {
		t.Errorf("authenticated stream to a dead upstream: %d %s", status, body)
	}
}

// quietAgent watches generations that have nothing new to say: it records
// where the watcher resumes and sends nothing until the watcher leaves.
type quietAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
	after chan string
}

func (a *quietAgent) WatchGeneration(ctx context.Context, req *connect.Request[agentv1.WatchGenerationRequest], _ *connect.ServerStream[agentv1.WatchGenerationResponse]) error {
	a.after <- req.Msg.GetAfterEventId()
	<-ctx.Done()
	return ctx.Err()
}

// A browser resuming a stream hears at once that the stream is open,
// although nothing has happened since its last event: EventSource stays
// "connecting" until it has the headers, and proxies may time it out.
func TestSSEResumeSendsHeadersAtOnce(t *testing.T) {
	t.Parallel()
	agent := &quietAgent{after: make(chan string, 4)}
	agentSrv := startH2C(t, mustHandler(agentv1connect.NewWorkflowAgentServiceHandler(agent)))
	_, base := startGateway(t, Config{
		Agent: Upstream{Address: agentSrv.URL}, Runtime: Upstream{Address: deadAddress(t)}, Engine: Upstream{Address: deadAddress(t)},
		// Far longer than the test waits: the headers must not wait for
		// the first heartbeat.
		SSE: SSEConfig{Heartbeat: time.Hour, Retry: time.Second},
	})
	for _, client := range []*http.Client{http1Client(t), h2cClient(t)} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/workflow_generation?session_id=s", nil)
		req.Header.Set("Last-Event-ID", "42")
		start := time.Now()
		resp, err := client.Do(req)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("no headers %v after a resumed stream was opened", time.Since(start))
		}
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, _ := resp.Body.Read(buf)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" || string(buf[:n]) != "retry: 1000\n\n" {
			t.Errorf("%s resumed stream: %d %v %q", resp.Proto, resp.StatusCode, resp.Header, buf[:n])
		}
		if after := <-agent.after; after != "42" {
			t.Errorf("the agent was asked to resume after %q, want 42", after)
		}
		_ = resp.Body.Close()
		cancel()
	}
}
