package server

import (
	"maps"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

// benchCopyRequest measures what the gateway adds to a forwarded call's
// headers: the allowlist copy, and with tokens, the signed identity.
func benchCopyRequest(b *testing.B, signed bool) {
	p := newHeaderPolicy(nil)
	if signed {
		tokens, err := interceptors.NewBackendTokens([]byte(testBackendKey), nil)
		if err != nil {
			b.Fatal(err)
		}
		p.tokens = tokens
	}
	src := http.Header{}
	src.Set("X-Request-Id", "req-1")
	interceptors.Identity{Subject: "alice", Tenant: "acme", Scopes: []string{"workflows:read", "workflows:execute"}}.SetHeaders(src)
	b.ReportAllocs()
	for b.Loop() {
		dst := make(http.Header, 8)
		p.copyRequest(dst, src)
	}
}

func BenchmarkCopyRequestUnsigned(b *testing.B) { benchCopyRequest(b, false) }

// BenchmarkCopyRequestSigned is the per-call cost of proving the caller's
// identity to the backends (a token signed once per identity, then looked
// up).
func BenchmarkCopyRequestSigned(b *testing.B) { benchCopyRequest(b, true) }

// TestTokenOnlyWithBackendKey: with a backend key every forwarded call
// carries one token, signed with it, whatever the caller sent; without
// one no token reaches the backend at all, neither one of the gateway's
// nor the caller's forgery, on REST and on gRPC alike.
func TestTokenOnlyWithBackendKey(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, signed := startGateway(t, b.cfg)
	_, unsigned := serveGateway(t, b.cfg)
	tokens, err := interceptors.NewBackendTokens([]byte(testBackendKey), nil)
	if err != nil {
		t.Fatal(err)
	}
	forged := http.Header{interceptors.HeaderToken: {"forged"}, "X-Request-Id": {"token-test"}}
	calls := map[string]func(gateway string){
		"rest": func(gateway string) {
			res, body := restCall(t, http.MethodPost, gateway+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"tok"}}`, forged)
			if res.StatusCode != http.StatusOK || body["output"] != "tok" {
				t.Fatalf("REST: %d %v", res.StatusCode, body)
			}
		},
		"grpc": func(gateway string) {
			client := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), gateway, connect.WithGRPC())
			req := connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "tok"}})
			maps.Copy(req.Header(), forged)
			res, err := client.ExecuteWorkflow(t.Context(), req)
			if err != nil || res.Msg.GetResult().GetOutput().GetStringValue() != "tok" {
				t.Fatalf("gRPC: %v %v", res, err)
			}
		},
	}
	for name, call := range calls {
		call(signed)
		h := b.engine.headersOf(t)
		if got := h.Values(interceptors.HeaderToken); len(got) != 1 {
			t.Errorf("%s with a key: the backend got %d tokens", name, len(got))
		} else if id, err := tokens.Verify(got[0]); err != nil || id.Subject != openSubject {
			t.Errorf("%s with a key: token of %+v, %v", name, id, err)
		}
		call(unsigned)
		h = b.engine.headersOf(t)
		if got := h.Values(interceptors.HeaderToken); len(got) != 0 {
			t.Errorf("%s without a key: the backend got tokens %q", name, got)
		}
		if got := h.Get("X-Request-Id"); got != "token-test" {
			t.Errorf("%s without a key: request id %q", name, got)
		}
	}
}
