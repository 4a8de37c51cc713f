package server

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The requests net/http refuses by itself, before any handler runs, are
// answered in the contract's shape on every way the gateway serves
// HTTP/1.1: its own loop handing the connection over, net/http behind the
// connection splitter, and net/http alone.
func TestNetHTTPRefusalsInContractShape(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, request string
		status        int
		code, message string
	}{
		{"url over the header limit", "GET /api/v1/workflow/executions/" + strings.Repeat("a", 70<<10) + " HTTP/1.1\r\nHost: x\r\n\r\n",
			431, "VALIDATION_ERROR", "request headers too large"},
		{"header over the limit", "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n",
			431, "VALIDATION_ERROR", "request headers too large"},
		{"no host", "GET /health HTTP/1.1\r\n\r\n", 400, "VALIDATION_ERROR", "missing required Host header"},
		{"invalid header name", "GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "VALIDATION_ERROR", "invalid header name"},
		{"malformed request line", "GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400, "VALIDATION_ERROR", "malformed HTTP request"},
		{"unknown transfer coding", "POST /api/v1/session HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "NOT_IMPLEMENTED", "unsupported transfer encoding"},
		{"protocol version", "GET /health HTTP/3.0\r\nHost: x\r\n\r\n", 505, "VALIDATION_ERROR", "unsupported protocol version"},
		// A malformed request after a good one on the same connection.
		{"second request", "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\n\r\n", 400, "VALIDATION_ERROR", "missing required Host header"},
	}
	for name, tweak := range map[string]func(*Config){
		"loop":     nil,
		"net/http": func(c *Config) { c.NetHTTP1 = true },
		"alone":    func(c *Config) { c.NetHTTP1, c.NetHTTPGRPC = true, true },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, cfg := startRecordingBackends(t)
			if tweak != nil {
				tweak(&cfg)
			}
			_, url := startGateway(t, cfg)
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					res, body := rawLastResponse(t, url, tc.request)
					var got struct {
						Error struct{ Code, Message string }
					}
					dec := json.NewDecoder(strings.NewReader(string(body)))
					dec.DisallowUnknownFields()
					if err := dec.Decode(&got); err != nil || res.StatusCode != tc.status || got.Error.Code != tc.code ||
						got.Error.Message != tc.message || res.Header.Get("Content-Type") != "application/json" ||
						!validRequestID(res.Header.Get("X-Request-Id")) || !res.Close {
						t.Errorf("got %d %v %q, want %d %s %q in the contract's shape, with a request id, closing", res.StatusCode, res.Header, body, tc.status, tc.code, tc.message)
					}
				})
			}
		})
	}
}

// rawLastResponse sends request on a new connection and returns the last
// response read before the connection closed.
func rawLastResponse(t *testing.T, url, request string) (*http.Response, []byte) {
	t.Helper()
	conn, br := dialH1(t, url)
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// Written concurrently: a refused head may be answered before it is
	// all sent.
	go func() { _, _ = io.WriteString(conn, request) }()
	var last *http.Response
	var body []byte
	for {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		last = res
		body, _ = io.ReadAll(res.Body)
		if res.Close {
			break
		}
	}
	if last == nil {
		t.Fatal("no response")
	}
	return last, body
}

// Only net/http's own plain-text answers are rewritten.
func TestContractAnswerRecognizesOnlyNetHTTPRefusals(t *testing.T) {
	t.Parallel()
	const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	for _, p := range []string{
		"HTTP/1.1 431 Request Header Fields Too Large" + errorHeaders + "431 Request Header Fields Too Large",
		"HTTP/1.1 400 Bad Request: missing required Host header" + errorHeaders + "400 Bad Request: missing required Host header",
		"HTTP/1.1 501 Not Implemented" + errorHeaders + "Unsupported transfer encoding",
		"HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version" + errorHeaders + "505 HTTP Version Not Supported: unsupported protocol version",
	} {
		if _, ok := contractAnswer([]byte(p)); !ok {
			t.Errorf("%q not rewritten", p)
		}
	}
	for _, p := range []string{
		// A handler's text/plain response goes through net/http's writer,
		// which adds a Date.
		"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Wed, 02 Dec 2026 05:00:00 GMT\r\nConnection: close\r\n\r\nno",
		"HTTP/1.1 200 OK" + errorHeaders + "fine",
		// A body that starts a write with the same head, but goes on.
		"HTTP/1.1 400 Bad Request" + errorHeaders + "400 Bad Request and more of a body",
		"HTTP/1.1 501 Not Implemented" + errorHeaders + "something else",
		"HTTP/1.0 400 Bad Request" + errorHeaders + "400 Bad Request",
		"\x00\x00\x12\x04\x00\x00\x00\x00\x00", // an HTTP/2 frame
		"HTTP/1.1 4",
	} {
		if _, ok := contractAnswer([]byte(p)); ok {
			t.Errorf("%q rewritten", p)
		}
	}
}
