package interceptors_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/interceptors"
)

// BenchmarkAccessLog is the access log's cost per call with the JSON log
// the gateway writes by default, output discarded.
func BenchmarkAccessLog(b *testing.B) {
	newLog := func() *interceptors.AccessLog {
		return interceptors.NewAccessLog(slog.New(benchJSONHandler(io.Discard)))
	}
	unary := func(err error) func(b *testing.B) {
		return func(b *testing.B) {
			call := newLog().Interceptor().WrapUnary(func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) {
				return nil, err
			})
			req := connect.NewRequest(&struct{}{})
			req.Header().Set("X-Request-Id", "0197c6f5e3a47d2b9c41f0e8a6b5d3c2")
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				_, _ = call(ctx, req)
			}
		}
	}
	b.Run("rpc", unary(nil))
	b.Run("rpc-error", unary(connect.NewError(connect.CodeUnavailable, errors.New("upstream \"engine\" unavailable"))))
	b.Run("http", func(b *testing.B) {
		h := newLog().Middleware(func(*http.Request) string { return "rest" }, http.NotFoundHandler())
		r := httptest.NewRequest(http.MethodGet, "/v1/workflows/abc", nil)
		r.Header.Set("X-Request-Id", "0197c6f5e3a47d2b9c41f0e8a6b5d3c2")
		w := httptest.NewRecorder()
		b.ReportAllocs()
		for b.Loop() {
			h.ServeHTTP(w, r)
		}
	})
}
