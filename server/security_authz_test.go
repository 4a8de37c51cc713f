package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

// The hostile-input matrix grows by the attacks on identities: names a
// header cannot carry, critical extensions, credentials without a tenant,
// and a gateway token sent by a client. Kept in a file of its own so the
// table's other contributors do not edit the same lines.
func init() {
	hostileCases = append(hostileCases,
		unauth("tenant with control characters", func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"tenant": "acme\r\nX-Evil: 1"}))
		}),
		unauth("subject with a NUL", func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"sub": "alice\x00root"}))
		}),
		unauth("scope with control characters", func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"scope": []any{"workflows:execute\x7f"}}))
		}),
		unauth("unknown crit header", func(tb testing.TB, _ *secFixture) http.Header {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
				"sub": "alice", "tenant": "acme", "scope": allTestScopes, "iss": testIssuer, "aud": testAudience,
				"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
			})
			tok.Header["crit"] = []string{"https://evil.test/ext"}
			s, err := tok.SignedString([]byte(secTestSecret))
			if err != nil {
				tb.Fatal(err)
			}
			return bearer(s)
		}),
		unauth("token without a tenant", func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"tenant": nil}))
		}),
		unauth("token with a numeric tenant", func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"tenant": 7}))
		}),
		unauth("API key without a tenant", func(testing.TB, *secFixture) http.Header {
			return http.Header{"X-Api-Key": {testTenantlessAPIKey}}
		}),
		hostileCase{
			name: "client-sent gateway token", status: http.StatusForbidden, code: "FORBIDDEN", rpc: connect.CodePermissionDenied,
			header: func(tb testing.TB, _ *secFixture) http.Header {
				tokens, _ := interceptors.NewBackendTokens([]byte(testBackendKey), nil)
				forged, _ := tokens.Header("root", "victim", allTestScopes)
				h := bearer(hsToken(tb, jwt.MapClaims{"scope": "workflows:read"}))
				h.Set(interceptors.HeaderToken, forged[0])
				return h
			},
		},
	)
}

// TestSingleTenantMode: with a default tenant configured, credentials that
// name none belong to it; those that name one keep theirs.
func TestSingleTenantMode(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) { c.Security.DefaultTenant = "solo" })
	for name, tc := range map[string]struct {
		header http.Header
		tenant string
	}{
		"token without a tenant":   {bearer(hsToken(t, jwt.MapClaims{"tenant": nil})), "solo"},
		"API key without a tenant": {http.Header{"X-Api-Key": {testTenantlessAPIKey}}, "solo"},
		"token with a tenant":      {bearer(hsToken(t, nil)), "acme"},
	} {
		m := marker("single", name)
		req := connect.NewRequest(executeRequest(m, false))
		for k, v := range tc.header {
			req.Header()[k] = v
		}
		res, err := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), f.url, connect.WithGRPC()).ExecuteWorkflow(t.Context(), req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := res.Msg.GetResult().GetOutput().GetStringValue(); got != tc.tenant {
			t.Errorf("%s: backend saw tenant %q, want %q", name, got, tc.tenant)
		}
	}
	// Without the default, the same calls are refused with a message that
	// says why.
	strict := newSecFixture(t, nil)
	res := doREST(t, http.MethodPost, strict.url+"/api/v1/workflow/execute", strings.NewReader(executeJSON("strict", false)),
		bearer(hsToken(t, jwt.MapClaims{"tenant": nil})))
	if res.status != http.StatusUnauthorized || !strings.Contains(string(res.body), "no tenant") {
		t.Errorf("tenant-less token: %d %s", res.status, res.body)
	}
}

// TestGatewaySignsEveryForwardedCall: the backend gets a token for the
// verified identity (not the one a client claimed, nor a client's token),
// an anonymous one for public procedures, and, with authentication off,
// one for the open gateway's single caller holding every scope.
func TestGatewaySignsEveryForwardedCall(t *testing.T) {
	t.Parallel()
	tokens, err := interceptors.NewBackendTokens([]byte(testBackendKey), nil)
	if err != nil {
		t.Fatal(err)
	}
	f := newSecFixture(t, nil)
	m := marker("signed")
	h := bearer(hsToken(t, nil))
	h.Set(interceptors.HeaderToken, "forged")
	if res := doREST(t, http.MethodPost, f.url+"/api/v1/workflow/execute", strings.NewReader(executeJSON(m, false)), h); res.status != http.StatusOK {
		t.Fatalf("%d %s", res.status, res.body)
	}
	verify := func(h http.Header) interceptors.Identity {
		t.Helper()
		if n := len(h.Values(interceptors.HeaderToken)); n != 1 {
			t.Fatalf("%d tokens reached the backend", n)
		}
		id, err := tokens.Verify(h.Get(interceptors.HeaderToken))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	if id := verify(f.rec.find(m)[0].header); id.Subject != "alice" || id.Tenant != "acme" || strings.Join(id.Scopes, " ") != allTestScopes {
		t.Errorf("signed identity %+v", id)
	}
	if res := doREST(t, http.MethodPost, f.url+"/api/v1/webhooks/signed/hook", strings.NewReader(`{}`), nil); res.status != http.StatusOK {
		t.Fatalf("webhook: %d %s", res.status, res.body)
	}
	if id := verify(f.rec.find("signed/hook")[0].header); id.Subject != "" || id.Tenant != "" || len(id.Scopes) != 0 {
		t.Errorf("public call signed as %+v", id)
	}

	rec, cfg := startRecordingBackends(t)
	_, open := startGateway(t, cfg)
	m = marker("signed", "open")
	if res := doREST(t, http.MethodPost, open+"/api/v1/workflow/execute", strings.NewReader(executeJSON(m, false)), nil); res.status != http.StatusOK {
		t.Fatalf("open gateway: %d %s", res.status, res.body)
	}
	id := verify(rec.find(m)[0].header)
	if id.Subject != openSubject || id.Tenant != openTenant || strings.Join(id.Scopes, " ") != "agent:chat workflows:execute workflows:read workflows:write" {
		t.Errorf("open gateway signed %+v", id)
	}
}
