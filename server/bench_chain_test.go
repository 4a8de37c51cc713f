package server

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// BenchmarkChain is BenchmarkForward's gRPC and REST gateway paths with the
// cap on calls that ask for no deadline that cmd/flowgate sets by default
// (-max-timeout 1m): every call then runs under the cap, which the other
// benchmarks leave off.
func BenchmarkChain(b *testing.B) {
	_, gw := benchStack(b, func(cfg *Config) { cfg.MaxTimeout = time.Minute })
	benchChain(b, gw, "")
}

// BenchmarkChainSecured is BenchmarkChain with BenchmarkSecuredForward's
// policy: a bearer token, per-IP and per-subject rate limits, identity
// forwarding.
func BenchmarkChainSecured(b *testing.B) {
	sec, _ := secConfig(b)
	sec.RateLimitIP, sec.RateLimitSubject = 1e9, 1e9
	_, gw := benchStack(b, func(cfg *Config) {
		cfg.MaxTimeout = time.Minute
		cfg.Security = sec
	})
	benchChain(b, gw, "Bearer "+token(b, jwt.SigningMethodRS256, secKeys().rsa, "rsa1", nil))
}

func benchChain(b *testing.B, gw, auth string) {
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "bench"}}
	b.Run("grpc", func(b *testing.B) {
		client := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(b), gw, connect.WithGRPC())
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				r := connect.NewRequest(req)
				if auth != "" {
					r.Header().Set("Authorization", auth)
				}
				if _, err := client.ExecuteWorkflow(context.Background(), r); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("rest", func(b *testing.B) {
		var header http.Header
		if auth != "" {
			header = http.Header{"Authorization": {auth}}
		}
		benchREST(b, gw, header)
	})
}
