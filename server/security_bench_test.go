package server

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
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

// BenchmarkSecuredForward is BenchmarkForward's gateway path with the whole
// security policy on: a bearer token (RS256, verified once and then
// cached), per-IP and per-subject rate limits, and identity forwarding.
func BenchmarkSecuredForward(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(nopEngine{}))
	sec, _ := secConfig(b)
	sec.RateLimitIP, sec.RateLimitSubject = 1e9, 1e9
	_, gw := gatewayBefore(b, mux, Config{Security: sec})
	auth := "Bearer " + token(b, jwt.SigningMethodRS256, secKeys().rsa, "rsa1", nil)
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "bench"}}
	rpc := func(opts ...connect.ClientOption) func(b *testing.B) {
		return func(b *testing.B) {
			client := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(b), gw, opts...)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := connect.NewRequest(req)
					r.Header().Set("Authorization", auth)
					if _, err := client.ExecuteWorkflow(context.Background(), r); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
	}
	b.Run("grpc", rpc(connect.WithGRPC()))
	b.Run("connect", rpc())
	b.Run("rest", func(b *testing.B) { benchREST(b, gw, http.Header{"Authorization": {auth}}) })
}
