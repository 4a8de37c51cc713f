package sse

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func newBridge(t *testing.T, cfg Config) (*tickServer, *httptest.Server) {
	t.Helper()
	ts, h := newTickHandler(t)
	mux := http.NewServeMux()
	mux.Handle(tickProcedure, h)
	cfg.RPC = mux
	cfg.Procedure = tickProcedure
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(b)
	srv.Start()
	t.Cleanup(srv.Close)
	return ts, srv
}

func get(t *testing.T, url string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

type contractError struct {
	Error struct {
		Code    string            `json:"code"`
		Message string            `json:"message"`
		Details map[string]string `json:"details"`
	} `json:"error"`
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	_, h := newTickHandler(t)
	for name, cfg := range map[string]Config{
		"no handler":      {Procedure: tickProcedure},
		"bad procedure":   {RPC: h, Procedure: "Ticks"},
		"unknown service": {RPC: h, Procedure: "/no.such.Service/Ticks"},
		"unknown method":  {RPC: h, Procedure: "/flowgate.ssetest.v1.TickService/Nope"},
		"unary":           {RPC: h, Procedure: "/flowgate.ssetest.v1.TickService/Once"},
		"bad id field":    {RPC: h, Procedure: tickProcedure, EventIDField: "nope"},
		"bad resume":      {RPC: h, Procedure: tickProcedure, ResumeField: "tags"},
		"negative retry":  {RPC: h, Procedure: tickProcedure, Retry: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

func TestStreamsEventsWithIDsAndHeaders(t *testing.T) {
	t.Parallel()
	ts, srv := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id", Retry: 1500 * time.Millisecond})
	resp := get(t, srv.URL+"?session_id=s1&count=3&tags=a&tags=b&access_token=secret", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, want := range map[string]string{
		"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache, no-transform",
		"X-Accel-Buffering": "no", "Content-Encoding": "",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("header %s = %q, want %q", k, got, want)
		}
	}
	events := readEvents(t, resp.Body, nil)
	if events[0].name != "retry" || events[0].data != "1500" {
		t.Errorf("first field = %+v, want retry 1500", events[0])
	}
	data := dataEvents(events)
	if len(data) != 3 {
		t.Fatalf("got %d data events: %+v", len(data), events)
	}
	for i, e := range data {
		var got map[string]any
		if err := json.Unmarshal([]byte(e.data), &got); err != nil {
			t.Fatalf("event %d data %q: %v", i, e.data, err)
		}
		want := string(rune('1' + i))
		// Proto names (tick_id), not JSON names (tickIdJson); int64 as string.
		if e.id != want || got["tick_id"] != want || got["text"] != "tick "+want || got["seq"] != want {
			t.Errorf("event %d = id %q data %v", i, e.id, got)
		}
	}
	if last := events[len(events)-1]; last.name != "end" || last.data != "{}" {
		t.Errorf("last event = %+v, want end", last)
	}
	req := <-ts.requests
	fields := req.Descriptor().Fields()
	if got := req.Get(fields.ByName("access_token")).String(); got != "" {
		t.Errorf("access_token copied into the request: %q", got)
	}
	if got := req.Get(fields.ByName("tags")).List().Len(); got != 2 {
		t.Errorf("tags has %d values, want 2", got)
	}
}

func TestCounterIDsWhenNoIDField(t *testing.T) {
	t.Parallel()
	_, srv := newBridge(t, Config{})
	data := dataEvents(readEvents(t, get(t, srv.URL+"?session_id=s&count=2&after_id=40", nil).Body, nil))
	if len(data) != 2 || data[0].id != "1" || data[1].id != "2" {
		t.Errorf("events = %+v, want ids 1 and 2", data)
	}
}

func TestResumeFromLastEventID(t *testing.T) {
	t.Parallel()
	_, srv := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id"})
	// The header wins over the original URL's parameter, as it does when
	// EventSource reconnects.
	resp := get(t, srv.URL+"?session_id=s&count=2&after_id=1", http.Header{"Last-Event-Id": {"5"}})
	data := dataEvents(readEvents(t, resp.Body, nil))
	if len(data) != 2 || data[0].id != "6" || data[1].id != "7" {
		t.Errorf("events = %+v, want ids 6 and 7", data)
	}
}

func TestNotResumableStreamStopsReconnects(t *testing.T) {
	t.Parallel()
	ts, srv := newBridge(t, Config{})
	resp := get(t, srv.URL+"?session_id=s&count=2", http.Header{"Last-Event-Id": {"2"}})
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("status %d, want 204", resp.StatusCode)
	}
	select {
	case <-ts.requests:
		t.Error("the call was repeated on reconnect")
	default:
	}
}

func TestPreStreamErrors(t *testing.T) {
	t.Parallel()
	_, srv := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id"})
	for _, tc := range []struct {
		query, lastID string
		status        int
		code, field   string
	}{
		{query: "session_id=&count=1", status: 400, code: "VALIDATION_ERROR", field: "session_id"},
		{query: "session_id=missing", status: 404, code: "NOT_FOUND"},
		{query: "session_id=s&nope=1", status: 400, code: "VALIDATION_ERROR", field: "nope"},
		{query: "session_id=s&count=x", status: 400, code: "VALIDATION_ERROR", field: "count"},
		{query: "session_id=s&session_id=t", status: 400, code: "VALIDATION_ERROR", field: "session_id"},
		{query: "session_id=s&count=0&fail_code=unauthenticated", status: 401, code: "UNAUTHORIZED"},
		{query: "session_id=s&count=0&fail_code=permission_denied", status: 403, code: "FORBIDDEN"},
		{query: "session_id=s&count=0&fail_code=already_exists", status: 409, code: "CONFLICT"},
		{query: "session_id=s&count=0&fail_code=resource_exhausted", status: 429, code: "RATE_LIMITED"},
		{query: "session_id=s&count=0&fail_code=unavailable", status: 502, code: "BAD_GATEWAY"},
		{query: "session_id=s&count=0&fail_code=deadline_exceeded", status: 504, code: "GATEWAY_TIMEOUT"},
		{query: "session_id=s&count=0&fail_code=internal", status: 500, code: "INTERNAL_ERROR"},
	} {
		resp := get(t, srv.URL+"?"+tc.query, nil)
		body, _ := io.ReadAll(resp.Body)
		var ce contractError
		if err := json.Unmarshal(body, &ce); err != nil || resp.StatusCode != tc.status || ce.Error.Code != tc.code ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s: %d %s %q, want %d %s", tc.query, resp.StatusCode, resp.Header.Get("Content-Type"), body, tc.status, tc.code)
			continue
		}
		if tc.field != "" && (ce.Error.Details["field"] != tc.field || ce.Error.Details["reason"] == "") {
			t.Errorf("%s: details %v, want field %q", tc.query, ce.Error.Details, tc.field)
		}
		if strings.Contains(string(body), "10.0.0.7") && tc.status >= 500 {
			t.Errorf("%s: upstream internals leaked: %s", tc.query, body)
		}
	}
}

func TestErrorEventAfterMessages(t *testing.T) {
	t.Parallel()
	_, srv := newBridge(t, Config{EventIDField: "tick_id"})
	resp := get(t, srv.URL+"?session_id=s&count=2&fail_code=unavailable", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	events := readEvents(t, resp.Body, nil)
	if len(dataEvents(events)) != 2 {
		t.Fatalf("events %+v", events)
	}
	last := events[len(events)-1]
	var ce contractError
	if last.name != "error" || json.Unmarshal([]byte(last.data), &ce) != nil || ce.Error.Code != "BAD_GATEWAY" ||
		strings.Contains(last.data, "10.0.0.7") {
		t.Errorf("last event %+v, want error BAD_GATEWAY without internals", last)
	}
}

func TestHeartbeats(t *testing.T) {
	t.Parallel()
	_, srv := newBridge(t, Config{Heartbeat: 40 * time.Millisecond})
	start := time.Now()
	events := readEvents(t, get(t, srv.URL+"?session_id=s&count=2&interval_ms=300", nil).Body, nil)
	beats := 0
	for _, e := range events {
		if e.name == ":" {
			beats++
		}
	}
	// 300ms of silence at a 40ms interval: about 7 heartbeats.
	if beats < 4 || beats > 9 {
		t.Errorf("%d heartbeats in %v, want about 7: %+v", beats, time.Since(start), events)
	}
}

func TestHeartbeatStartsAQuietStream(t *testing.T) {
	t.Parallel()
	ts, srv := newBridge(t, Config{Heartbeat: 30 * time.Millisecond})
	resp := get(t, srv.URL+"?session_id=s&count=0&block=true", nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := readEvents(t, resp.Body, func(e event) bool { return e.name == ":" })
	if len(events) != 1 {
		t.Errorf("events %+v", events)
	}
	_ = resp.Body.Close()
	<-ts.cancelled
}

func TestDisconnectCancelsUpstream(t *testing.T) {
	t.Parallel()
	ts, srv := newBridge(t, Config{})
	resp := get(t, srv.URL+"?session_id=s&count=1&block=true", nil)
	readEvents(t, resp.Body, func(e event) bool { return e.name == "" })
	closed := time.Now()
	_ = resp.Body.Close()
	select {
	case at := <-ts.cancelled:
		if d := at.Sub(closed); d > time.Second {
			t.Errorf("upstream cancelled %v after the browser left", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("upstream never saw the cancellation")
	}
}

func TestLongStreamOutlivesServerWriteTimeout(t *testing.T) {
	t.Parallel()
	_, h := newTickHandler(t)
	b, err := New(Config{RPC: h, Procedure: tickProcedure, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(b)
	srv.Config.WriteTimeout = 200 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	events := readEvents(t, get(t, srv.URL+"?session_id=s&count=8&interval_ms=100", nil).Body, nil)
	if data := dataEvents(events); len(data) != 8 || events[len(events)-1].name != "end" {
		t.Errorf("stream cut short by the write timeout: %+v", events)
	}
}

func TestMiddlewareErrorsKeepTheirShape(t *testing.T) {
	t.Parallel()
	_, h := newTickHandler(t)
	// An interceptor-free HTTP middleware in front of the RPC handler that
	// refuses the call the way connect.NewErrorWriter does.
	deny := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer ok" {
			w.Header().Set("Retry-After", "3")
			_ = connect.NewErrorWriter().Write(w, r, connect.NewError(connect.CodeResourceExhausted, nil))
			return
		}
		h.ServeHTTP(w, r)
	})
	b, err := New(Config{RPC: deny, Procedure: tickProcedure})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(b)
	t.Cleanup(srv.Close)
	resp := get(t, srv.URL+"?session_id=s&count=1", nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), `"RATE_LIMITED"`) {
		t.Errorf("got %d %s", resp.StatusCode, body)
	}
	resp = get(t, srv.URL+"?session_id=s&count=1", http.Header{"Authorization": {"Bearer ok"}})
	if data := dataEvents(readEvents(t, resp.Body, nil)); len(data) != 1 {
		t.Errorf("authorized call: %+v", data)
	}
}
