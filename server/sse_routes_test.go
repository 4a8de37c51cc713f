package server

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/agent"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
)

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct {
	name, id string
	data     map[string]any
}

// readSSE reads events until the stream ends or stop says so; comments
// (heartbeats) are skipped.
func readSSE(tb testing.TB, body io.Reader, stop func(sseEvent) bool) []sseEvent {
	tb.Helper()
	var (
		out  []sseEvent
		cur  sseEvent
		data string
	)
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if data != "" {
				if err := json.Unmarshal([]byte(data), &cur.data); err != nil {
					tb.Fatalf("event data %q is not one JSON object: %v", data, err)
				}
				out = append(out, cur)
				if stop != nil && stop(cur) {
					return out
				}
			}
			cur, data = sseEvent{}, ""
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "event":
			cur.name = v
		case "id":
			cur.id = v
		case "data":
			data += v
		}
	}
	return out
}

func sseGet(tb testing.TB, client *http.Client, rawURL string, header http.Header) *http.Response {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.(interface{ Context() context.Context }).Context(), http.MethodGet, rawURL, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// startEmbedded runs the reference backends and a gateway in front of
// them, as cmd/flowgate does by default; tweak adjusts the gateway's
// configuration.
func startEmbedded(tb testing.TB, bcfg backends.Config, sse SSEConfig, tweak ...func(*Config)) string {
	tb.Helper()
	cfg := Config{SSE: sse}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(tb, bcfg)
	for _, f := range tweak {
		f(&cfg)
	}
	_, base := startGateway(tb, cfg)
	return base
}

// startBackends runs the reference backends (on SQLite in a temporary
// directory unless bcfg says otherwise) until the test ends.
func startBackends(tb testing.TB, bcfg backends.Config) (agentUp, runtimeUp, engineUp Upstream) {
	tb.Helper()
	ls, err := backends.LoopbackListeners()
	if err != nil {
		tb.Fatal(err)
	}
	if bcfg.DataDir == "" {
		bcfg.DataDir = tb.TempDir()
	}
	if bcfg.PublicURL == "" {
		bcfg.PublicURL = "http://gateway.test"
	}
	if bcfg.AuthKey == nil {
		bcfg.AuthKey = []byte(testBackendKey)
	}
	b, err := backends.Start(context.Background(), bcfg, ls)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = b.Shutdown(ctx)
	})
	a, r, e := b.Addrs()
	return Upstream{Address: a}, Upstream{Address: r}, Upstream{Address: e}
}

func createSession(tb testing.TB, base string) string {
	tb.Helper()
	resp, err := http.Post(base+"/api/v1/session", "application/json", strings.NewReader(`{"action":"create"}`))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		SessionID string `json:"session_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK || out.SessionID == "" {
		tb.Fatalf("create session: %d %v", resp.StatusCode, err)
	}
	return out.SessionID
}

const orderMessage = "When a webhook receives an order over 100, POST it to https://example.com/orders"

func TestSSEThroughGateway(t *testing.T) {
	t.Parallel()
	base := startEmbedded(t, backends.Config{}, SSEConfig{Heartbeat: time.Second, Retry: 750 * time.Millisecond})
	client := http1Client(t)
	sid := createSession(t, base)

	chatURL := base + "/api/v1/chat/stream?" + url.Values{"session_id": {sid}, "user_message": {orderMessage}}.Encode()
	resp := sseGet(t, client, chatURL, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" ||
		resp.Header.Get("X-Accel-Buffering") != "no" || resp.Header.Get("Content-Encoding") != "" {
		t.Fatalf("chat stream: %d %v", resp.StatusCode, resp.Header)
	}
	chat := readSSE(t, resp.Body, nil)
	if len(chat) < 4 || chat[len(chat)-1].name != "end" {
		t.Fatalf("chat events %+v", chat)
	}
	for i, ev := range chat[:len(chat)-1] {
		if ev.name != "" || ev.id != strconv.Itoa(i+1) || ev.data["type"] != "message" || ev.data["content"] == "" {
			t.Errorf("chat event %d: %+v", i, ev)
		}
	}

	genURL := base + "/api/v1/workflow_generation?session_id=" + sid
	gen := readSSE(t, sseGet(t, client, genURL, nil).Body, nil)
	var kinds []string
	for _, ev := range gen {
		kinds = append(kinds, ev.name+"/"+str(ev.data["type"]))
	}
	if got := strings.Join(kinds, " "); got != "/waiting /start /draft /debugging /debugging /complete end/" {
		t.Fatalf("generation events %q", got)
	}
	done := gen[len(gen)-2]
	if done.id != done.data["event_id"] || str(done.data["workflow_id"]) == "" {
		t.Errorf("complete event %+v", done)
	}
	// The deployment it names is real.
	dep, err := client.Get(base + "/api/v1/workflow/deployments/" + str(done.data["workflow_id"]))
	if err != nil || dep.StatusCode != http.StatusOK {
		t.Fatalf("deployment: %v %v", dep, err)
	}
	_ = dep.Body.Close()

	// EventSource's reconnection resumes right after the last event seen.
	resumed := readSSE(t, sseGet(t, client, genURL, http.Header{"Last-Event-Id": {gen[2].id}}).Body, nil)
	if len(resumed) != len(gen)-3 || resumed[0].id != gen[3].id {
		t.Errorf("resumed after %s: %+v", gen[2].id, resumed)
	}
	// A chat stream cannot resume: a reconnect must not repeat the turn.
	if r := sseGet(t, client, chatURL, http.Header{"Last-Event-Id": {"3"}}); r.StatusCode != http.StatusNoContent {
		t.Errorf("chat reconnect: %d, want 204", r.StatusCode)
	}

	// The same RPCs are ordinary server streams over gRPC and gRPC-Web.
	for name, opt := range map[string]connect.ClientOption{"grpc": connect.WithGRPC(), "grpcweb": connect.WithGRPCWeb(), "connect": connect.WithProtoJSON()} {
		c := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), base, opt)
		stream, err := c.WatchGeneration(t.Context(), connect.NewRequest(&agentv1.WatchGenerationRequest{SessionId: sid}))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		n := 0
		for stream.Receive() {
			n++
		}
		if stream.Err() != nil || n != len(gen)-1 {
			t.Errorf("%s: %d events, err %v", name, n, stream.Err())
		}
	}
}

func str(v any) string { s, _ := v.(string); return s }

func TestSSEPreStreamErrorsThroughGateway(t *testing.T) {
	t.Parallel()
	base := startEmbedded(t, backends.Config{}, SSEConfig{})
	sid := createSession(t, base)
	client := http1Client(t)
	for _, tc := range []struct {
		path   string
		status int
		code   string
		field  string
	}{
		{"/api/v1/chat/stream?session_id=nope&user_message=hi", 404, "NOT_FOUND", ""},
		{"/api/v1/chat/stream?session_id=" + sid, 400, "VALIDATION_ERROR", "user_message"},
		{"/api/v1/chat/stream?session_id=" + sid + "&user_message=hi&extra=1", 400, "VALIDATION_ERROR", "extra"},
		{"/api/v1/workflow_generation", 400, "VALIDATION_ERROR", "session_id"},
		{"/api/v1/workflow_generation?session_id=" + sid + "&after_event_id=x", 400, "VALIDATION_ERROR", "after_event_id"},
	} {
		resp := sseGet(t, client, base+tc.path, nil)
		var body struct {
			Error struct {
				Code    string            `json:"code"`
				Details map[string]string `json:"details"`
			} `json:"error"`
		}
		err := json.NewDecoder(resp.Body).Decode(&body)
		if err != nil || resp.StatusCode != tc.status || body.Error.Code != tc.code || body.Error.Details["field"] != tc.field {
			t.Errorf("%s: %d %+v %v", tc.path, resp.StatusCode, body, err)
		}
	}
}

func TestSSEDisconnectCancelsUpstreamThroughGateway(t *testing.T) {
	t.Parallel()
	rec := newRecorder()
	agentSrv := startH2C(t, mustHandler(agentv1connect.NewWorkflowAgentServiceHandler(&testAgent{rec: rec})))
	_, base := startGateway(t, Config{
		Agent: Upstream{Address: agentSrv.URL}, Runtime: Upstream{Address: deadAddress(t)}, Engine: Upstream{Address: deadAddress(t)},
	})
	resp := sseGet(t, http1Client(t), base+"/api/v1/chat/stream?session_id=s&user_message=m", nil)
	readSSE(t, resp.Body, func(sseEvent) bool { return true })
	left := time.Now()
	_ = resp.Body.Close()
	select {
	case <-rec.canceled:
		if d := time.Since(left); d > time.Second {
			t.Errorf("the agent saw the cancellation %v after the browser left", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the agent never saw the cancellation")
	}
}

func mustHandler(path string, h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(path, h)
	return mux
}

var _ = agent.NewPlanner

// Each stream is one access-log line, written when it ends, whichever
// protocol the browser speaks.
func TestSSEAccessLogOneLinePerStream(t *testing.T) {
	t.Parallel()
	var log lockedBuffer
	base := startEmbedded(t, backends.Config{}, SSEConfig{}, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(&log, nil))
	})
	session := createSession(t, base)
	for _, client := range []*http.Client{http1Client(t), h2cClient(t)} {
		resp := sseGet(t, client, base+"/api/v1/chat/stream?"+url.Values{"session_id": {session}, "user_message": {"hello"}}.Encode(), nil)
		if events := readSSE(t, resp.Body, nil); len(events) == 0 || events[len(events)-1].name != "end" {
			t.Fatalf("%s stream: %+v", resp.Proto, events)
		}
	}
	var chats int
	for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if entry["path"] == "/api/v1/chat/stream" {
			t.Errorf("the stream was also logged at the HTTP level: %v", entry)
		}
		if entry["procedure"] == agentv1connect.WorkflowAgentServiceChatProcedure {
			chats++
			if entry["protocol"] != "sse" || entry["code"] != "ok" {
				t.Errorf("stream line %v, want protocol sse and code ok", entry)
			}
		}
	}
	if chats != 2 {
		t.Errorf("%d log lines for 2 streams:\n%s", chats, log.String())
	}
}

// Shutting down ends open streams with an error event that says so,
// whichever protocol carries them, and Serve returns once they have ended.
func TestSSEStreamsEndAtShutdown(t *testing.T) {
	t.Parallel()
	cfg := Config{Security: SecurityConfig{BackendKey: testBackendKey}}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{})
	log, base, stop, served := serveLogged(t, cfg, 10*time.Second)
	session := createSession(t, base)
	var streams []*http.Response
	for _, client := range []*http.Client{http1Client(t), h2cClient(t)} {
		resp := sseGet(t, client, base+"/api/v1/workflow_generation?session_id="+session, nil)
		// The first event (waiting) says the stream is open.
		readSSE(t, resp.Body, func(sseEvent) bool { return true })
		streams = append(streams, resp)
	}
	start := time.Now()
	stop()
	for _, resp := range streams {
		events := readSSE(t, resp.Body, nil)
		if len(events) == 0 || events[len(events)-1].name != "error" {
			t.Fatalf("%s stream ended with %+v, want an error event", resp.Proto, events)
		}
		// The browser is told the truth, and a code it may retry: the
		// upstream is fine, the gateway is going away.
		last, _ := events[len(events)-1].data["error"].(map[string]any)
		if last["code"] != "BAD_GATEWAY" || last["message"] != "the gateway is shutting down; reconnect" {
			t.Errorf("%s stream's error event %v, want BAD_GATEWAY saying the gateway is shutting down", resp.Proto, last)
		}
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutting down took %v with streams open", d)
	}
	if cut := logEntryWith(t, log.String(), "cut"); cut != nil {
		t.Errorf("streams that ended at shutdown were reported cut: %v", cut)
	}
}
