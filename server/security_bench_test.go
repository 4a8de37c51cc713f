package server

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkWrapHTTP measures what the security middleware adds to every
// request before the transcoder sees it.
func BenchmarkWrapHTTP(b *testing.B) {
	sec, err := newSecurity(SecurityConfig{SecretKey: secTestSecret, RateLimitIP: 1e9}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	h := sec.wrapHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	cases := map[string]func() *http.Request{
		"grpc": func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", strings.NewReader("\x00\x00\x00\x00\x00"))
			r.Header.Set("Content-Type", "application/grpc")
			r.Header.Set("Te", "trailers")
			r.Header.Set("Authorization", "Bearer x")
			return r
		},
		"rest-query": func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/api/v1/executions?page=2&page_size=50", nil)
			r.Header.Set("Authorization", "Bearer x")
			return r
		},
		"cors-actual": func() *http.Request {
			r := httptest.NewRequest(http.MethodPost, "/api/v1/workflow/execute", strings.NewReader("{}"))
			r.Header.Set("Content-Type", "application/json")
			r.Header.Set("Origin", "http://localhost:3000")
			return r
		},
	}
	for name, mk := range cases {
		b.Run(name, func(b *testing.B) {
			w := httptest.NewRecorder()
			reqs := make([]*http.Request, b.N)
			for i := range reqs {
				reqs[i] = mk()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				h.ServeHTTP(w, reqs[i])
			}
		})
	}
}
