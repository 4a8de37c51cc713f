package interceptors

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

const testSecret = "0123456789abcdef0123456789abcdef-test-secret"

// testKeys are generated once: RSA generation is slow.
var testKeys = sync.OnceValue(func() struct {
	rsa, rsa2 *rsa.PrivateKey
	ec        *ecdsa.PrivateKey
	ed        ed25519.PrivateKey
} {
	r1, _ := rsa.GenerateKey(rand.Reader, 2048)
	r2, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	return struct {
		rsa, rsa2 *rsa.PrivateKey
		ec        *ecdsa.PrivateKey
		ed        ed25519.PrivateKey
	}{r1, r2, ec, ed}
})

func writePEM(tb testing.TB, dir, name string, pub any) string {
	tb.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwkOf renders a public key as a JWK.
func jwkOf(kid string, pub any) map[string]string {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		point, _ := k.Bytes()
		size := (len(point) - 1) / 2
		return map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(point[1 : 1+size]), "y": b64(point[1+size:])}
	case ed25519.PublicKey:
		return map[string]string{"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k)}
	}
	panic("unsupported key")
}

func jwksDoc(keys ...map[string]string) []byte {
	data, _ := json.Marshal(map[string]any{"keys": keys})
	return data
}

// mint signs claims with method and key, setting kid when non-empty.
func mint(tb testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func claims(now time.Time, extra jwt.MapClaims) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "alice", "iss": "https://issuer.test", "aud": "flowgate",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(),
		"scope": "workflows:read workflows:write", "tenant": "acme",
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	return c
}

type verifierFixture struct {
	v      *JWTVerifier
	now    time.Time
	rsaPEM []byte
}

func newFixture(tb testing.TB) verifierFixture {
	tb.Helper()
	k := testKeys()
	dir := tb.TempDir()
	rsaPath := writePEM(tb, dir, "rsa1.pem", &k.rsa.PublicKey)
	jwksPath := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksPath, jwksDoc(jwkOf("ec1", &k.ec.PublicKey), jwkOf("ed1", k.ed.Public())), 0o600); err != nil {
		tb.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	v, err := NewJWTVerifier(tb.Context(), JWTConfig{
		Secret:         []byte(testSecret),
		PublicKeyFiles: []string{rsaPath},
		JWKS:           jwksPath,
		Issuer:         "https://issuer.test",
		Audience:       "flowgate",
		Leeway:         30 * time.Second,
		Now:            func() time.Time { return now },
	})
	if err != nil {
		tb.Fatal(err)
	}
	pemBytes, _ := os.ReadFile(rsaPath)
	return verifierFixture{v: v, now: now, rsaPEM: pemBytes}
}

func TestJWTVerify(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	k := testKeys()
	now := f.now
	hs := func(c jwt.MapClaims) string { return mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", c) }
	valid := hs(claims(now, nil))
	parts := strings.Split(valid, ".")
	tamperedPayload, _ := json.Marshal(claims(now, jwt.MapClaims{"scope": "admin"}))
	cases := []struct {
		name    string
		token   string
		wantErr string // substring of the message; "" means valid
	}{
		{"hs256", valid, ""},
		{"rs256 with kid", mint(t, jwt.SigningMethodRS256, k.rsa, "rsa1", claims(now, nil)), ""},
		{"rs256 without kid", mint(t, jwt.SigningMethodRS256, k.rsa, "", claims(now, nil)), ""},
		{"ps256", mint(t, jwt.SigningMethodPS256, k.rsa, "rsa1", claims(now, nil)), ""},
		{"es256 from jwks", mint(t, jwt.SigningMethodES256, k.ec, "ec1", claims(now, nil)), ""},
		{"eddsa from jwks", mint(t, jwt.SigningMethodEdDSA, k.ed, "ed1", claims(now, nil)), ""},
		{"within leeway", hs(claims(now, jwt.MapClaims{"exp": now.Add(-10 * time.Second).Unix()})), ""},
		{"alg none", mint(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims(now, nil)), "invalid token"},
		{"alg none unsigned with kid", b64([]byte(`{"alg":"none","typ":"JWT","kid":"rsa1"}`)) + "." + parts[1] + ".", "invalid token"},
		{"expired", hs(claims(now, jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()})), "token expired"},
		{"not yet valid", hs(claims(now, jwt.MapClaims{"nbf": now.Add(time.Minute).Unix()})), "not valid yet"},
		{"issued in the future", hs(claims(now, jwt.MapClaims{"iat": now.Add(time.Hour).Unix()})), "not valid yet"},
		{"no exp", hs(claims(now, jwt.MapClaims{"exp": nil})), "required claim"},
		{"wrong issuer", hs(claims(now, jwt.MapClaims{"iss": "https://evil.test"})), "issuer"},
		{"no issuer", hs(claims(now, jwt.MapClaims{"iss": nil})), "required claim"},
		{"wrong audience", hs(claims(now, jwt.MapClaims{"aud": "other"})), "audience"},
		{"no subject", hs(claims(now, jwt.MapClaims{"sub": nil})), "no subject"},
		{"tampered payload", parts[0] + "." + b64(tamperedPayload) + "." + parts[2], "invalid token"},
		{"tampered signature", parts[0] + "." + parts[1] + "." + b64([]byte("not the signature at all....")), "invalid token"},
		{"hs256 signed with the RSA public key", mint(t, jwt.SigningMethodHS256, f.rsaPEM, "rsa1", claims(now, nil)), "invalid token"},
		{"rs256 unknown kid", mint(t, jwt.SigningMethodRS256, k.rsa2, "nope", claims(now, nil)), "unknown key"},
		{"rs256 other key without kid", mint(t, jwt.SigningMethodRS256, k.rsa2, "", claims(now, nil)), "invalid token"},
		{"es256 key under the rsa kid", mint(t, jwt.SigningMethodES256, k.ec, "rsa1", claims(now, nil)), "unknown key"},
		{"hs512 not allowed", mint(t, jwt.SigningMethodHS512, []byte(testSecret), "", claims(now, nil)), "invalid token"},
		{"garbage", "not.a.token", "invalid token"},
		{"empty", "", "invalid token"},
		{"huge", strings.Repeat("a", maxTokenBytes+1), "too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := f.v.Verify(t.Context(), tc.token)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if id.Subject != "alice" || id.Tenant != "acme" || !id.HasScope("workflows:write") || id.Method != MethodJWT {
					t.Errorf("identity = %+v", id)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted the token: %+v", id)
			}
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("code = %v, want unauthenticated", connect.CodeOf(err))
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestJWTClaimNames(t *testing.T) {
	t.Parallel()
	now := time.Now()
	v, err := NewJWTVerifier(t.Context(), JWTConfig{
		Secret: []byte(testSecret), SubjectClaim: "uid", ScopeClaim: "scp", TenantClaim: "org",
	})
	if err != nil {
		t.Fatal(err)
	}
	tok := mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{
		"uid": "bob", "scp": []any{"a:read", "b:write", 3, "bad scope"}, "org": "initech",
		"sub": "ignored", "exp": now.Add(time.Minute).Unix(),
	})
	id, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if id.Subject != "bob" || id.Tenant != "initech" || strings.Join(id.Scopes, ",") != "a:read,b:write" {
		t.Errorf("identity = %+v", id)
	}
}

func TestJWTConfigRejected(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPath := writePEM(t, dir, "small.pem", &small.PublicKey)
	privPath := filepath.Join(dir, "private.pem")
	der, _ := x509.MarshalPKCS8PrivateKey(testKeys().ec)
	_ = os.WriteFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	badJWKS := filepath.Join(dir, "bad.json")
	_ = os.WriteFile(badJWKS, []byte("{not json"), 0o600)
	cases := map[string]JWTConfig{
		"nothing":       {},
		"short secret":  {Secret: []byte("short")},
		"small rsa":     {PublicKeyFiles: []string{smallPath}},
		"private key":   {PublicKeyFiles: []string{privPath}},
		"missing file":  {PublicKeyFiles: []string{filepath.Join(dir, "absent.pem")}},
		"bad jwks file": {JWKS: badJWKS},
	}
	for name, cfg := range cases {
		if _, err := NewJWTVerifier(t.Context(), cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseJWKSSkipsUnsafeKeys(t *testing.T) {
	t.Parallel()
	k := testKeys()
	enc := jwkOf("enc", &k.rsa.PublicKey)
	enc["use"] = "enc"
	pinned := jwkOf("pinned", &k.rsa.PublicKey)
	pinned["alg"] = "PS384"
	mismatch := jwkOf("mismatch", &k.rsa.PublicKey)
	mismatch["alg"] = "HS256"
	doc := jwksDoc(
		map[string]string{"kty": "oct", "kid": "sym", "k": b64([]byte(testSecret))},
		enc, mismatch, pinned,
		map[string]string{"kty": "EC", "kid": "badcurve", "crv": "P-192", "x": "AA", "y": "AA"},
		map[string]string{"kty": "EC", "kid": "offcurve", "crv": "P-256", "x": b64([]byte{1}), "y": b64([]byte{2})},
	)
	keys, skipped, err := parseJWKS(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].kid != "pinned" || strings.Join(keys[0].algs, ",") != "PS384" {
		t.Errorf("keys = %+v", keys)
	}
	if len(skipped) != 5 {
		t.Errorf("skipped %d keys, want 5: %v", len(skipped), skipped)
	}
}

// jwksServer serves a key set that the test can rotate, counting fetches.
type jwksServer struct {
	mu      sync.Mutex
	doc     []byte
	fetches atomic.Int32
	url     string
}

func newJWKSServer(tb testing.TB, doc []byte) *jwksServer {
	s := &jwksServer{doc: doc}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		_, _ = w.Write(s.doc)
	}))
	tb.Cleanup(srv.Close)
	s.url = srv.URL + "/.well-known/jwks.json?token=secret"
	return s
}

func (s *jwksServer) set(doc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doc = doc
}

func TestJWKSUnknownKidRefreshesOnceRateLimited(t *testing.T) {
	t.Parallel()
	k := testKeys()
	srv := newJWKSServer(t, jwksDoc(jwkOf("old", &k.rsa.PublicKey)))
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	v, err := NewJWTVerifier(t.Context(), JWTConfig{JWKS: srv.url, JWKSMinRefresh: 10 * time.Second, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.fetches.Load(); got != 1 {
		t.Fatalf("start-up fetches = %d, want 1", got)
	}
	// The provider rotates in a new key; a token naming it arrives.
	srv.set(jwksDoc(jwkOf("old", &k.rsa.PublicKey), jwkOf("new", &k.rsa2.PublicKey)))
	clock.Add(int64(11 * time.Second))
	c := jwt.MapClaims{"sub": "svc", "exp": now().Add(time.Minute).Unix()}
	if _, err := v.Verify(t.Context(), mint(t, jwt.SigningMethodRS256, k.rsa2, "new", c)); err != nil {
		t.Fatalf("token with the rotated-in kid: %v", err)
	}
	if got := srv.fetches.Load(); got != 2 {
		t.Fatalf("fetches after unknown kid = %d, want 2", got)
	}
	// A flood of made-up kids costs at most one fetch per interval.
	for i := range 20 {
		if _, err := v.Verify(t.Context(), mint(t, jwt.SigningMethodRS256, k.rsa2, "made-up-"+string(rune('a'+i)), c)); err == nil {
			t.Fatal("made-up kid accepted")
		}
	}
	if got := srv.fetches.Load(); got != 2 {
		t.Errorf("fetches during a kid flood = %d, want 2", got)
	}
	clock.Add(int64(11 * time.Second))
	_, _ = v.Verify(t.Context(), mint(t, jwt.SigningMethodRS256, k.rsa2, "made-up", c))
	if got := srv.fetches.Load(); got != 3 {
		t.Errorf("fetches after the interval = %d, want 3", got)
	}
}

func TestJWKSPeriodicRefresh(t *testing.T) {
	t.Parallel()
	k := testKeys()
	srv := newJWKSServer(t, jwksDoc(jwkOf("a", &k.rsa.PublicKey)))
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	v, err := NewJWTVerifier(t.Context(), JWTConfig{JWKS: srv.url, JWKSRefresh: time.Minute, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	// Key "a" is withdrawn by the provider; after the refresh interval
	// the gateway stops accepting it.
	srv.set(jwksDoc(jwkOf("b", &k.rsa2.PublicKey)))
	clock.Add(int64(2 * time.Minute))
	c := jwt.MapClaims{"sub": "svc", "exp": now().Add(time.Hour).Unix()}
	tokA := mint(t, jwt.SigningMethodRS256, k.rsa, "a", c)
	_, _ = v.Verify(t.Context(), tokA) // triggers the background reload
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Past the verified-token cache's lifetime too.
		clock.Add(int64(tokenCacheTTL + time.Second))
		_, err := v.Verify(t.Context(), tokA)
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("withdrawn key still accepted after the refresh interval")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := v.Verify(t.Context(), mint(t, jwt.SigningMethodRS256, k.rsa2, "b", c)); err != nil {
		t.Errorf("new key: %v", err)
	}
}

func TestJWKSURLDownAtStartup(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	v, err := NewJWTVerifier(t.Context(), JWTConfig{JWKS: url, JWKSMinRefresh: time.Nanosecond})
	if err != nil {
		t.Fatalf("an unreachable JWKS URL must not stop start-up: %v", err)
	}
	tok := mint(t, jwt.SigningMethodRS256, testKeys().rsa, "k", jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Minute).Unix()})
	if _, err := v.Verify(t.Context(), tok); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("err = %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	if got := redactURL("https://user:pw@idp.test/jwks?sig=abc"); got != "https://idp.test/jwks" {
		t.Errorf("redactURL = %q", got)
	}
}

var apiKeyHeader = http.CanonicalHeaderKey(HeaderAPIKey)

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	keys, err := ParseAPIKeys(`[{"sha256":"` + HashAPIKey("s3cret-key") + `","subject":"ci","tenant":"acme","scopes":["workflows:read"]}]`)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthenticator(t.Context(), AuthConfig{APIKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{apiKeyHeader: {"s3cret-key"}}
	id, err := a.Authenticate(t.Context(), h)
	if err != nil || id.Subject != "ci" || id.Tenant != "acme" || !id.HasScope("workflows:read") || id.Method != MethodAPIKey {
		t.Fatalf("identity %+v, err %v", id, err)
	}
	for name, h := range map[string]http.Header{
		"revoked":        {apiKeyHeader: {"old-key"}},
		"empty":          {apiKeyHeader: {""}},
		"two keys":       {apiKeyHeader: {"s3cret-key", "s3cret-key"}},
		"key and bearer": {apiKeyHeader: {"s3cret-key"}, "Authorization": {"Bearer x"}},
		"bearer, no jwt": {"Authorization": {"Bearer x"}},
		"basic auth":     {"Authorization": {"Basic czNjcmV0LWtleQ=="}},
		"none":           {},
	} {
		if _, err := a.Authenticate(t.Context(), h); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	compact, err := ParseAPIKeys(" " + HashAPIKey("a") + ":ci-bot:acme:workflows:read workflows:write ; " + HashAPIKey("b") + ":svc;")
	if err != nil || len(compact) != 2 || compact[0].Subject != "ci-bot" || compact[0].Tenant != "acme" ||
		strings.Join(compact[0].Scopes, ",") != "workflows:read,workflows:write" || compact[1].Subject != "svc" || compact[1].Tenant != "" {
		t.Errorf("compact form: %+v, %v", compact, err)
	}
	for name, cfg := range map[string]string{
		"not json":            `[nope`,
		"no subject, compact": HashAPIKey("k"),
		"bad hash, compact":   "zz:svc",
		"unknown field":       `[{"sha256":"` + HashAPIKey("k") + `","subject":"a","key":"plaintext"}]`,
		"short hash":          `[{"sha256":"abcd","subject":"a"}]`,
		"no subject":          `[{"sha256":"` + HashAPIKey("k") + `"}]`,
		"spaced scope":        `[{"sha256":"` + HashAPIKey("k") + `","subject":"a","scopes":["a b"]}]`,
		"duplicate":           `[{"sha256":"` + HashAPIKey("k") + `","subject":"a"},{"sha256":"` + HashAPIKey("k") + `","subject":"b"}]`,
	} {
		keys, err := ParseAPIKeys(cfg)
		if err == nil {
			_, err = NewAuthenticator(t.Context(), AuthConfig{APIKeys: keys})
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUnverifiedExpiry(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Minute).Truncate(time.Second)
	got, err := UnverifiedExpiry(mint(t, jwt.SigningMethodHS256, []byte("x"), "", jwt.MapClaims{"exp": exp.Unix()}))
	if err != nil || !got.Equal(exp) {
		t.Errorf("exp = %v, err %v", got, err)
	}
	if _, err := UnverifiedExpiry(mint(t, jwt.SigningMethodHS256, []byte("x"), "", jwt.MapClaims{"sub": "a"})); err == nil {
		t.Error("token without exp accepted")
	}
}

// FuzzJWTVerify feeds arbitrary strings to the verifier: it must never
// panic, and must refuse everything it was not given a valid token for.
func FuzzJWTVerify(f *testing.F) {
	fx := newFixture(f)
	k := testKeys()
	valid := []string{
		mint(f, jwt.SigningMethodHS256, []byte(testSecret), "", claims(fx.now, nil)),
		mint(f, jwt.SigningMethodRS256, k.rsa, "rsa1", claims(fx.now, nil)),
		mint(f, jwt.SigningMethodES256, k.ec, "ec1", claims(fx.now, nil)),
	}
	accepted := map[string]bool{}
	for _, tok := range valid {
		f.Add(tok)
		accepted[tok] = true
	}
	f.Add(mint(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims(fx.now, nil)))
	f.Add(mint(f, jwt.SigningMethodHS256, fx.rsaPEM, "rsa1", claims(fx.now, nil)))
	f.Add("")
	f.Add("..")
	f.Add("eyJhbGciOiJIUzI1NiJ9.e30.")
	f.Add(`eyJhbGciOiJSUzI1NiIsImtpZCI6W119.eyJleHAiOiJzb29uIn0.AA`)
	f.Add(strings.Repeat("A", 100) + "." + strings.Repeat("B", 100) + ".")
	f.Fuzz(func(t *testing.T, token string) {
		id, err := fx.v.Verify(context.Background(), token)
		if err == nil {
			if !accepted[token] || id.Subject != "alice" {
				t.Fatalf("accepted a token that was never issued: %q", token)
			}
			return
		}
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeUnauthenticated {
			t.Fatalf("err = %v, want unauthenticated", err)
		}
	})
}

// TestTokenCacheHonoursExpiry: a cached verification never outlives the
// token's exp, nor the cache's own TTL.
func TestTokenCacheHonoursExpiry(t *testing.T) {
	t.Parallel()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	v, err := NewJWTVerifier(t.Context(), JWTConfig{Secret: []byte(testSecret), Leeway: -1, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	short := mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{"sub": "a", "exp": now().Add(10 * time.Second).Unix()})
	if _, err := v.Verify(t.Context(), short); err != nil {
		t.Fatal(err)
	}
	clock.Add(int64(11 * time.Second))
	if _, err := v.Verify(t.Context(), short); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("expired token served from the cache: %v", err)
	}
	long := mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{"sub": "b", "exp": now().Add(time.Hour).Unix()})
	if _, err := v.Verify(t.Context(), long); err != nil {
		t.Fatal(err)
	}
	if _, ok := v.cache.get(long, now()); !ok {
		t.Error("verified token not cached")
	}
	if _, ok := v.cache.get(long, now().Add(tokenCacheTTL)); ok {
		t.Error("cache entry outlived its TTL")
	}
	if _, ok := v.cache.get(long[:len(long)-1]+"A", now()); ok {
		t.Error("a different token hit the cache")
	}
}
