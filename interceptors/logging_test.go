package interceptors_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/flowgate/flowgate/interceptors"
)

// syncBuffer collects log lines written from handler goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		out = append(out, m)
	}
	return out
}

// deny rejects every call, as an authentication interceptor placed after
// the access log would.
type deny struct{}

func (deny) WrapUnary(connect.UnaryFunc) connect.UnaryFunc {
	return func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no credentials"))
	}
}
func (deny) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (deny) WrapStreamingHandler(connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(context.Context, connect.StreamingHandlerConn) error {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("no credentials"))
	}
}

// jsonHandlers are the two JSON handlers a gateway may log with: slog's,
// and the one whose access-log lines the access log encodes itself.
var jsonHandlers = map[string]func(io.Writer, *slog.HandlerOptions) slog.Handler{
	"slog":   func(w io.Writer, o *slog.HandlerOptions) slog.Handler { return slog.NewJSONHandler(w, o) },
	"direct": interceptors.NewJSONHandler,
}

func TestAccessLogOneLinePerRequest(t *testing.T) {
	t.Parallel()
	for name, newHandler := range jsonHandlers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testAccessLogOneLinePerRequest(t, newHandler)
		})
	}
}

func testAccessLogOneLinePerRequest(t *testing.T, newHandler func(io.Writer, *slog.HandlerOptions) slog.Handler) {
	var buf syncBuffer
	access := interceptors.NewAccessLog(slog.New(newHandler(&buf, nil)))
	mux := http.NewServeMux()
	open := grpchealth.NewStaticChecker("open")
	mux.Handle(grpchealth.NewHandler(open, connect.WithInterceptors(access.Interceptor())))
	closed := http.NewServeMux()
	closed.Handle(grpchealth.NewHandler(open, connect.WithInterceptors(access.Interceptor(), deny{})))
	mux.Handle("/closed/", http.StripPrefix("/closed", closed))
	protocol := func(r *http.Request) string {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			return "grpc"
		}
		return "rest"
	}
	srv := httptest.NewUnstartedServer(access.Middleware(protocol, mux))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)

	ok := grpchealth.NewClient(srv.Client(), srv.URL, connect.WithGRPC())
	req := &grpchealth.CheckRequest{Service: "open"}
	if _, err := ok.Check(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	rejected := grpchealth.NewClient(srv.Client(), srv.URL+"/closed", connect.WithGRPC())
	if _, err := rejected.Check(t.Context(), req); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("closed: %v", err)
	}
	notFound, err := srv.Client().Get(srv.URL + "/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, notFound.Body)
	notFound.Body.Close()
	malformed, err := srv.Client().Post(srv.URL+"/grpc.health.v1.Health/Check", "application/grpc", strings.NewReader("\x00\x00\x00\x00\x09junk"))
	if err != nil {
		t.Fatal(err)
	}
	// Read to the end: a response can arrive (the gRPC error is flushed)
	// before its handler returns, and so before its line is written.
	_, _ = io.Copy(io.Discard, malformed.Body)
	malformed.Body.Close()

	lines := buf.lines(t)
	if len(lines) != 4 {
		t.Fatalf("%d log lines for 4 requests: %v", len(lines), lines)
	}
	want := []struct{ msg, code string }{{"rpc", "ok"}, {"rpc", "unauthenticated"}, {"http", ""}, {"http", ""}}
	for i, line := range lines {
		if line["msg"] != want[i].msg {
			t.Errorf("line %d: msg %v, want %s: %v", i, line["msg"], want[i].msg, line)
		}
		for _, key := range []string{"protocol", "duration", "peer", "request_id"} {
			if _, ok := line[key]; !ok {
				t.Errorf("line %d lacks %s: %v", i, key, line)
			}
		}
		if want[i].msg == "rpc" {
			if line["procedure"] != "/grpc.health.v1.Health/Check" || line["code"] != want[i].code || line["protocol"] != "grpc" {
				t.Errorf("line %d: %v", i, line)
			}
		}
	}
	if lines[2]["status"] != float64(404) || lines[2]["path"] != "/nowhere" {
		t.Errorf("unknown route line: %v", lines[2])
	}
	// A request the Connect handler refused before any interceptor ran (its
	// message did not decode) is still logged, once, at the HTTP level.
	if lines[3]["protocol"] != "grpc" || lines[3]["path"] != "/grpc.health.v1.Health/Check" {
		t.Errorf("malformed request line: %v", lines[3])
	}
}

func TestAccessLogWritesNothingWhenDisabled(t *testing.T) {
	t.Parallel()
	for name, newHandler := range jsonHandlers {
		var buf syncBuffer
		logger := slog.New(newHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
		access := interceptors.NewAccessLog(logger)
		h := access.Middleware(func(*http.Request) string { return "rest" }, http.NotFoundHandler())
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
		if n := len(buf.lines(t)); n != 0 {
			t.Errorf("%s: %d lines below the level", name, n)
		}
	}
}

// TestAccessLogDirectKeepsSlogOptions checks that what would change the
// line (attributes added to the logger, ReplaceAttr) still reaches it.
func TestAccessLogDirectKeepsSlogOptions(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	with := slog.New(interceptors.NewJSONHandler(&buf, nil)).With(slog.String("service", "gw"))
	replace := slog.New(interceptors.NewJSONHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == "peer" {
				a.Value = slog.StringValue("redacted")
			}
			return a
		},
	}))
	for _, logger := range []*slog.Logger{with, replace} {
		h := interceptors.NewAccessLog(logger).Middleware(func(*http.Request) string { return "rest" }, http.NotFoundHandler())
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	}
	lines := buf.lines(t)
	if len(lines) != 2 || lines[0]["service"] != "gw" || lines[1]["peer"] != "redacted" {
		t.Errorf("lines: %v", lines)
	}
}
