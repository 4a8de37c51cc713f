package interceptors

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

var testBackendKey = []byte("backend-key-for-tests-0123456789abcdef")

func newBackendTokens(tb testing.TB, now func() time.Time) *BackendTokens {
	tb.Helper()
	b, err := NewBackendTokens(testBackendKey, now)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestBackendTokensRoundTrip(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	b := newBackendTokens(t, clock.now)
	h1, err := b.Header("alice", "acme", "workflows:read agent:chat")
	if err != nil {
		t.Fatal(err)
	}
	id, err := b.Verify(h1[0])
	if err != nil || id.Subject != "alice" || id.Tenant != "acme" || strings.Join(id.Scopes, ",") != "workflows:read,agent:chat" || id.Method != MethodBackendToken {
		t.Fatalf("identity %+v, err %v", id, err)
	}
	// Signed once per identity: the same header until half the lifetime.
	clock.add(BackendTokenTTL/2 - time.Second)
	if h2, _ := b.Header("alice", "acme", "workflows:read agent:chat"); &h2[0] != &h1[0] {
		t.Error("the token was signed again within half its lifetime")
	}
	if other, _ := b.Header("alice", "other", "workflows:read agent:chat"); other[0] == h1[0] {
		t.Error("two tenants share a token")
	}
	clock.add(2 * time.Second)
	h3, _ := b.Header("alice", "acme", "workflows:read agent:chat")
	if h3[0] == h1[0] {
		t.Error("the token was not renewed past half its lifetime")
	}
	// The old token still verifies until it expires, then not.
	clock.add(BackendTokenTTL/2 + backendTokenLeeway + time.Minute)
	if _, err := b.Verify(h1[0]); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired token: %v", err)
	}
	anon, _ := b.Header("", "", "")
	if id, err := b.Verify(anon[0]); err != nil || id.Subject != "" || id.Tenant != "" || len(id.Scopes) != 0 {
		t.Errorf("anonymous token: %+v %v", id, err)
	}
	if _, err := NewBackendTokens([]byte("short"), nil); err == nil {
		t.Error("a short key was accepted")
	}
}

func TestBackendTokensRefuseForgeries(t *testing.T) {
	t.Parallel()
	b := newBackendTokens(t, nil)
	now := time.Now()
	good := jwt.MapClaims{
		"iss": backendTokenIssuer, "aud": backendTokenAudience, "sub": "root", "tenant": "victim",
		"scope": "workflows:write", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
	}
	with := func(edit jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{}
		for k, v := range good {
			c[k] = v
		}
		for k, v := range edit {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	otherKey := []byte("some-other-key-of-sufficient-length-000")
	crit := jwt.NewWithClaims(jwt.SigningMethodHS256, good)
	crit.Header["crit"] = []string{"x"}
	critTok, _ := crit.SignedString(testBackendKey)
	for name, tok := range map[string]string{
		"missing":           "",
		"garbage":           "a.b.c",
		"other key":         mint(t, jwt.SigningMethodHS256, otherKey, "", good),
		"alg none":          mint(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", good),
		"hs512":             mint(t, jwt.SigningMethodHS512, testBackendKey, "", good),
		"expired":           mint(t, jwt.SigningMethodHS256, testBackendKey, "", with(jwt.MapClaims{"exp": now.Add(-time.Hour).Unix()})),
		"no exp":            mint(t, jwt.SigningMethodHS256, testBackendKey, "", with(jwt.MapClaims{"exp": nil})),
		"other audience":    mint(t, jwt.SigningMethodHS256, testBackendKey, "", with(jwt.MapClaims{"aud": "someone"})),
		"other issuer":      mint(t, jwt.SigningMethodHS256, testBackendKey, "", with(jwt.MapClaims{"iss": "someone"})),
		"control in tenant": mint(t, jwt.SigningMethodHS256, testBackendKey, "", with(jwt.MapClaims{"tenant": "a\nb"})),
		"crit":              critTok,
		"huge":              strings.Repeat("x", maxTokenBytes+1),
	} {
		if id, err := b.Verify(tok); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "gateway token") {
			t.Errorf("%s: identity %+v, err %v", name, id, err)
		}
	}
	if id, err := b.Verify(mint(t, jwt.SigningMethodHS256, testBackendKey, "", good)); err != nil || id.Tenant != "victim" {
		t.Errorf("a valid token: %+v %v", id, err)
	}
}

// BenchmarkBackendTokenHeader is the gateway's cost per forwarded call:
// the token of an identity already signed.
func BenchmarkBackendTokenHeader(b *testing.B) {
	tokens := newBackendTokens(b, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := tokens.Header("alice", "acme", "workflows:read workflows:write workflows:execute agent:chat"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkBackendTokenSign is the cost of the first call of an identity
// (and of one call per identity every half lifetime).
func BenchmarkBackendTokenSign(b *testing.B) {
	tokens := newBackendTokens(b, nil)
	key := backendIdentity{"alice", "acme", "workflows:read workflows:write workflows:execute agent:chat"}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tokens.sign(key, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBackendTokenVerify is a backend's cost per call: a token seen
// before.
func BenchmarkBackendTokenVerify(b *testing.B) {
	tokens := newBackendTokens(b, nil)
	h, _ := tokens.Header("alice", "acme", "workflows:read workflows:write workflows:execute agent:chat")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tokens.Verify(h[0]); err != nil {
			b.Fatal(err)
		}
	}
}
