package sse

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func newBridge(t *testing.T, cfg Config) (*tickServer, *httptest.Server, *Bridge) {
	t.Helper()
	ts, h := newTickHandler(t)
	cfg.Handler = h
	cfg.Procedure = tickProcedure
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ts, serve(t, b, 0), b
}

// serve serves b over HTTP/1.1 and unencrypted HTTP/2, and checks at the
// end of the test that no stream outlived it.
func serve(t *testing.T, b *Bridge, writeTimeout time.Duration) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(b)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.WriteTimeout = writeTimeout
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		shutdown(t, b)
	})
	return srv
}

// protocols are the two ways a browser reaches the bridge: HTTP/1.1, whose
// connections the bridge takes over from net/http, and HTTP/2, whose
// streams stay with net/http.
var protocols = []string{"http1", "h2c"}

func newClient(t *testing.T, protocol string) *http.Client {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	if protocol == "h2c" {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// forEachProtocol runs test once per protocol with a get for it.
func forEachProtocol(t *testing.T, test func(t *testing.T, get getFunc)) {
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, protocol)
			test(t, func(t *testing.T, url string, header http.Header) *http.Response {
				t.Helper()
				resp := do(t, c, url, header)
				if resp.ProtoMajor != map[string]int{"http1": 1, "h2c": 2}[protocol] {
					t.Fatalf("got %s over %s", resp.Proto, protocol)
				}
				return resp
			})
		})
	}
}

type getFunc func(t *testing.T, url string, header http.Header) *http.Response

func get(t *testing.T, url string, header http.Header) *http.Response {
	t.Helper()
	return do(t, http.DefaultClient, url, header)
}

func do(t *testing.T, c *http.Client, url string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
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
		"bad procedure":   {Handler: h, Procedure: "Ticks"},
		"unknown service": {Handler: h, Procedure: "/no.such.Service/Ticks"},
		"unknown method":  {Handler: h, Procedure: "/flowgate.ssetest.v1.TickService/Nope"},
		"unary":           {Handler: h, Procedure: "/flowgate.ssetest.v1.TickService/Once"},
		"bad id field":    {Handler: h, Procedure: tickProcedure, EventIDField: "nope"},
		"bad resume":      {Handler: h, Procedure: tickProcedure, ResumeField: "tags"},
		"negative retry":  {Handler: h, Procedure: tickProcedure, Retry: -time.Second},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

func TestStreamsEventsWithIDsAndHeaders(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		ts, srv, _ := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id", Retry: 1500 * time.Millisecond})
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
	})
}

func TestCounterIDsWhenNoIDField(t *testing.T) {
	t.Parallel()
	_, srv, _ := newBridge(t, Config{})
	data := dataEvents(readEvents(t, get(t, srv.URL+"?session_id=s&count=2&after_id=40", nil).Body, nil))
	if len(data) != 2 || data[0].id != "1" || data[1].id != "2" {
		t.Errorf("events = %+v, want ids 1 and 2", data)
	}
}

func TestResumeFromLastEventID(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		_, srv, _ := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id"})
		// The header wins over the original URL's parameter, as it does when
		// EventSource reconnects.
		resp := get(t, srv.URL+"?session_id=s&count=2&after_id=1", http.Header{"Last-Event-Id": {"5"}})
		data := dataEvents(readEvents(t, resp.Body, nil))
		if len(data) != 2 || data[0].id != "6" || data[1].id != "7" {
			t.Errorf("events = %+v, want ids 6 and 7", data)
		}
	})
}

func TestNotResumableStreamStopsReconnects(t *testing.T) {
	t.Parallel()
	ts, srv, _ := newBridge(t, Config{})
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
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		_, srv, _ := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id"})
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
			// Without a Retry-After (too many streams open), retrying would
			// not help: EventSource is stopped.
			{query: "session_id=s&count=0&fail_code=resource_exhausted&tags=retry-after%3D", status: 429, code: "RATE_LIMITED"},
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
	})
}

func TestErrorEventAfterMessages(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		_, srv, _ := newBridge(t, Config{EventIDField: "tick_id"})
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
	})
}

func TestHeartbeats(t *testing.T) {
	t.Parallel()
	_, srv, _ := newBridge(t, Config{Heartbeat: 40 * time.Millisecond})
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
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		ts, srv, _ := newBridge(t, Config{Heartbeat: 30 * time.Millisecond})
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
	})
}

func TestDisconnectCancelsUpstream(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		ts, srv, _ := newBridge(t, Config{})
		checkDisconnect(t, ts, get(t, srv.URL+"?session_id=s&count=1&block=true", nil))
	})
}

func TestLongStreamOutlivesServerWriteTimeout(t *testing.T) {
	t.Parallel()
	_, h := newTickHandler(t)
	b, err := New(Config{Handler: h, Procedure: tickProcedure, Heartbeat: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, b, 200*time.Millisecond)
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		events := readEvents(t, get(t, srv.URL+"?session_id=s&count=8&interval_ms=100", nil).Body, nil)
		if data := dataEvents(events); len(data) != 8 || events[len(events)-1].name != "end" {
			t.Errorf("stream cut short by the write timeout: %+v", events)
		}
	})
}
