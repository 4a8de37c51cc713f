package interceptors

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

// newTenantAuth is an authenticator with HS256 tokens, a key with a
// tenant and one without, and defaultTenant.
func newTenantAuth(t *testing.T, defaultTenant string) *Authenticator {
	t.Helper()
	keys, err := ParseAPIKeys(HashAPIKey("with-tenant") + ":ci:acme:workflows:read;" + HashAPIKey("no-tenant") + ":ops::workflows:read")
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthenticator(t.Context(), AuthConfig{
		JWT: JWTConfig{Secret: []byte(testSecret)}, APIKeys: keys, DefaultTenant: defaultTenant,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func hsBearer(t *testing.T, c jwt.MapClaims, header map[string]any) http.Header {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return http.Header{"Authorization": {"Bearer " + s}}
}

// TestTenantlessCredentialsRefused: a token without a tenant claim (or with
// a non-string one) and an API key without a tenant no longer share a
// tenant called "default"; they are refused unless single-tenant mode
// names the tenant.
func TestTenantlessCredentialsRefused(t *testing.T) {
	t.Parallel()
	exp := time.Now().Add(time.Hour).Unix()
	noTenant := jwt.MapClaims{"sub": "alice", "exp": exp}
	numericTenant := jwt.MapClaims{"sub": "alice", "tenant": 42, "exp": exp}
	apiKey := http.Header{apiKeyHeader: {"no-tenant"}}

	strict := newTenantAuth(t, "")
	for name, h := range map[string]http.Header{
		"jwt without tenant":  hsBearer(t, noTenant, nil),
		"jwt numeric tenant":  hsBearer(t, numericTenant, nil),
		"api key, no tenant":  apiKey,
		"jwt, empty tenant":   hsBearer(t, jwt.MapClaims{"sub": "alice", "tenant": "", "exp": exp}, nil),
		"jwt, tenant is null": hsBearer(t, jwt.MapClaims{"sub": "alice", "tenant": nil, "exp": exp}, nil),
	} {
		id, err := strict.Authenticate(t.Context(), h)
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "tenant") {
			t.Errorf("%s: identity %+v, err %v; want unauthenticated naming the tenant", name, id, err)
		}
	}
	if id, err := strict.Authenticate(t.Context(), http.Header{apiKeyHeader: {"with-tenant"}}); err != nil || id.Tenant != "acme" {
		t.Errorf("key with a tenant: %+v %v", id, err)
	}

	single := newTenantAuth(t, "solo")
	for name, h := range map[string]http.Header{"jwt": hsBearer(t, noTenant, nil), "api key": apiKey} {
		if id, err := single.Authenticate(t.Context(), h); err != nil || id.Tenant != "solo" {
			t.Errorf("single-tenant %s: %+v %v", name, id, err)
		}
	}
	// A tenant that is not a string is a malformed token, whatever the mode.
	if _, err := single.Authenticate(t.Context(), hsBearer(t, numericTenant, nil)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("numeric tenant in single-tenant mode: %v", err)
	}
	if strict.TenantlessAPIKeys() != 1 {
		t.Errorf("tenant-less keys = %d", strict.TenantlessAPIKeys())
	}
}

// TestHostileTokenNames: control characters in a token's subject, tenant
// or scope are the credential's fault (401), not a failure of the call to
// the backend they would break; so is an unknown critical header.
func TestHostileTokenNames(t *testing.T) {
	t.Parallel()
	a := newTenantAuth(t, "")
	exp := time.Now().Add(time.Hour).Unix()
	base := func(edit jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "alice", "tenant": "acme", "scope": "workflows:read", "exp": exp}
		for k, v := range edit {
			c[k] = v
		}
		return c
	}
	cases := map[string]struct {
		header http.Header
		want   string
	}{
		"tenant with a newline":  {hsBearer(t, base(jwt.MapClaims{"tenant": "acme\r\nX-Flowgate-Tenant: victim"}), nil), "control characters"},
		"tenant with a NUL":      {hsBearer(t, base(jwt.MapClaims{"tenant": "ac\x00me"}), nil), "control characters"},
		"subject with a DEL":     {hsBearer(t, base(jwt.MapClaims{"sub": "alice\x7f"}), nil), "control characters"},
		"subject with a C1":      {hsBearer(t, base(jwt.MapClaims{"sub": "alice\u0085"}), nil), "control characters"},
		"scope with a control":   {hsBearer(t, base(jwt.MapClaims{"scope": []any{"workflows:read\x01"}}), nil), "scope"},
		"huge tenant":            {hsBearer(t, base(jwt.MapClaims{"tenant": strings.Repeat("t", 300)}), nil), "too long"},
		"unknown crit":           {hsBearer(t, base(nil), map[string]any{"crit": []string{"exp-ext"}, "exp-ext": true}), "crit"},
		"empty crit":             {hsBearer(t, base(nil), map[string]any{"crit": []string{}}), "crit"},
		"crit naming a standard": {hsBearer(t, base(nil), map[string]any{"crit": []string{"alg"}}), "crit"},
	}
	for name, tc := range cases {
		id, err := a.Authenticate(t.Context(), tc.header)
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: identity %+v, err %v; want unauthenticated mentioning %q", name, id, err, tc.want)
		}
	}
	for name, cfg := range map[string]string{
		"subject with a newline": HashAPIKey("k") + ":ci\n:acme:workflows:read",
		"tenant with a tab":      HashAPIKey("k") + ":ci:ac\tme:workflows:read",
	} {
		keys, err := ParseAPIKeys(cfg)
		if err == nil {
			_, err = NewAuthenticator(t.Context(), AuthConfig{APIKeys: keys})
		}
		if err == nil || !strings.Contains(err.Error(), "control characters") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := NewAuthenticator(t.Context(), AuthConfig{APIKeys: []APIKey{{SHA256: HashAPIKey("k"), Subject: "a"}}, DefaultTenant: "bad\x00"}); err == nil {
		t.Error("a default tenant with a NUL was accepted")
	}
}
