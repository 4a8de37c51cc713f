package server

import (
	"net/http"
	"testing"

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
