package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

// secProtocols are the RPC protocols of the hostile-input matrix, each with
// the transport its real callers use.
var secProtocols = []struct {
	name  string
	opts  []connect.ClientOption
	http1 bool
}{
	{"connect", nil, true},
	{"connect-json", []connect.ClientOption{connect.WithProtoJSON()}, true},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}, false},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}, true},
}

// hostileCase is one attack, with what every protocol must answer.
type hostileCase struct {
	name   string
	header func(tb testing.TB, f *secFixture) http.Header
	big    bool
	status int    // REST status
	code   string // REST error code
	rpc    connect.Code
}

func unauth(name string, header func(tb testing.TB, f *secFixture) http.Header) hostileCase {
	return hostileCase{name: name, header: header, status: http.StatusUnauthorized, code: "UNAUTHORIZED", rpc: connect.CodeUnauthenticated}
}

var hostileCases = []hostileCase{
	unauth("no token", func(testing.TB, *secFixture) http.Header { return nil }),
	unauth("alg none", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(token(tb, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", nil))
	}),
	unauth("expired", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(hsToken(tb, jwt.MapClaims{"exp": time.Now().Add(-time.Minute).Unix()}))
	}),
	unauth("not yet valid", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(hsToken(tb, jwt.MapClaims{"nbf": time.Now().Add(time.Minute).Unix()}))
	}),
	unauth("wrong issuer", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(hsToken(tb, jwt.MapClaims{"iss": "https://evil.test"}))
	}),
	unauth("wrong audience", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(hsToken(tb, jwt.MapClaims{"aud": "someone-else"}))
	}),
	unauth("tampered signature", func(tb testing.TB, _ *secFixture) http.Header {
		tok := token(tb, jwt.SigningMethodRS256, secKeys().rsa, "rsa1", nil)
		i := strings.LastIndexByte(tok, '.')
		sig := []byte(tok[i+1:])
		sig[10] ^= 1 // flip a bit of a middle character
		if sig[10] == '.' || sig[10] == '=' {
			sig[10] = 'A'
		}
		return bearer(tok[:i+1] + string(sig))
	}),
	unauth("HS256 signed with the RSA public key", func(tb testing.TB, f *secFixture) http.Header {
		return bearer(token(tb, jwt.SigningMethodHS256, f.rsaPEM, "rsa1", nil))
	}),
	unauth("unknown kid", func(tb testing.TB, _ *secFixture) http.Header {
		return bearer(token(tb, jwt.SigningMethodES256, secKeys().ec, "rotated-away", nil))
	}),
	unauth("revoked API key", func(testing.TB, *secFixture) http.Header {
		return http.Header{"X-Api-Key": {"revoked-key-0123456789"}}
	}),
	{
		name: "missing scope", status: http.StatusForbidden, code: "FORBIDDEN", rpc: connect.CodePermissionDenied,
		header: func(tb testing.TB, _ *secFixture) http.Header {
			return bearer(hsToken(tb, jwt.MapClaims{"scope": "workflows:read"}))
		},
	},
	{
		name: "spoofed identity headers", status: http.StatusForbidden, code: "FORBIDDEN", rpc: connect.CodePermissionDenied,
		header: func(tb testing.TB, _ *secFixture) http.Header {
			h := bearer(hsToken(tb, jwt.MapClaims{"scope": "workflows:read"}))
			h.Set("X-Flowgate-Scopes", "workflows:execute")
			h.Set("X-Flowgate-Subject", "root")
			h.Set("X-Flowgate-Tenant", "victim")
			return h
		},
	},
	{
		name: "oversized body", big: true, status: http.StatusRequestEntityTooLarge, code: "PAYLOAD_TOO_LARGE",
		rpc:    connect.CodeResourceExhausted,
		header: func(tb testing.TB, _ *secFixture) http.Header { return bearer(hsToken(tb, nil)) },
	},
}

func marker(parts ...string) string {
	return strings.NewReplacer(" ", "-", "/", "-").Replace(strings.Join(parts, "|"))
}

func executeRequest(name string, big bool) *enginev1.ExecuteWorkflowRequest {
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}}
	if big {
		req.TriggerData, _ = structpb.NewStruct(map[string]any{"blob": strings.Repeat("x", testMaxBody+1)})
	}
	return req
}

func executeJSON(name string, big bool) string {
	blob := ""
	if big {
		blob = strings.Repeat("x", testMaxBody+1)
	}
	return fmt.Sprintf(`{"workflow_definition":{"name":%q},"trigger_data":{"blob":%q}}`, name, blob)
}

// TestHostileInputsEveryProtocol sends each attack over REST, Connect
// (binary and JSON), gRPC and gRPC-Web, and checks the exact error and
// that the backend never saw the call.
func TestHostileInputsEveryProtocol(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	for _, tc := range hostileCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			t.Run("rest", func(t *testing.T) {
				t.Parallel()
				m := marker(tc.name, "rest")
				res := doREST(t, http.MethodPost, f.url+"/api/v1/workflow/execute",
					strings.NewReader(executeJSON(m, tc.big)), tc.header(t, f))
				if res.status != tc.status || res.code != tc.code {
					t.Errorf("REST: %d %s, want %d %s (body %.200s)", res.status, res.code, tc.status, tc.code, res.body)
				}
				if tc.status == http.StatusUnauthorized && res.header.Get("Www-Authenticate") == "" {
					t.Error("401 without WWW-Authenticate")
				}
				if got := f.rec.find(m); len(got) != 0 {
					t.Errorf("the backend saw the call: %v", got[0].header)
				}
			})
			for _, p := range secProtocols {
				t.Run(p.name, func(t *testing.T) {
					t.Parallel()
					m := marker(tc.name, p.name)
					client := h2cClient(t)
					if p.http1 {
						client = http1Client(t)
					}
					req := connect.NewRequest(executeRequest(m, tc.big))
					for k, v := range tc.header(t, f) {
						req.Header()[k] = v
					}
					_, err := enginev1connect.NewWorkflowEngineServiceClient(client, f.url, p.opts...).ExecuteWorkflow(t.Context(), req)
					if connect.CodeOf(err) != tc.rpc {
						t.Errorf("%s: err = %v, want %v", p.name, err, tc.rpc)
					}
					var ce *connect.Error
					if errors.As(err, &ce) && strings.Contains(ce.Message(), "Bearer") {
						t.Errorf("error message echoes credentials: %q", ce.Message())
					}
					if got := f.rec.find(m); len(got) != 0 {
						t.Errorf("the backend saw the call: %v", got[0].header)
					}
				})
			}
		})
	}
}

// TestAcceptedCallsCarryVerifiedIdentity is the matrix's positive control:
// every credential kind gets through on every protocol, and the backend
// sees the verified identity, never the one a client claimed.
func TestAcceptedCallsCarryVerifiedIdentity(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	creds := []struct {
		name           string
		header         func(tb testing.TB) http.Header
		subject, scope string
		tenant         string
	}{
		{"hs256", func(tb testing.TB) http.Header { return bearer(hsToken(tb, nil)) }, "alice", allTestScopes, "acme"},
		{"rs256", func(tb testing.TB) http.Header {
			return bearer(token(tb, jwt.SigningMethodRS256, secKeys().rsa, "rsa1", jwt.MapClaims{"sub": "rob", "tenant": "rsa-co"}))
		}, "rob", allTestScopes, "rsa-co"},
		{"es256 jwks", func(tb testing.TB) http.Header {
			return bearer(token(tb, jwt.SigningMethodES256, secKeys().ec, "ec1", jwt.MapClaims{"sub": "eve", "tenant": "ec-co", "scope": "workflows:execute"}))
		}, "eve", "workflows:execute", "ec-co"},
		{"api key", func(testing.TB) http.Header { return http.Header{"X-Api-Key": {testAPIKey}} }, "svc", "workflows:execute workflows:read", "ops"},
	}
	for _, c := range creds {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			check := func(t *testing.T, m string) {
				got := f.rec.find(m)
				if len(got) != 1 {
					t.Fatalf("backend saw %d calls", len(got))
				}
				h := got[0].header
				if h.Get(interceptors.HeaderSubject) != c.subject || h.Get(interceptors.HeaderTenant) != c.tenant ||
					h.Get(interceptors.HeaderScopes) != c.scope || len(h.Values(interceptors.HeaderTenant)) != 1 {
					t.Errorf("backend identity headers: %v", h)
				}
				if h.Get("Authorization") != "" || h.Get("X-Api-Key") != "" || h.Get("X-Flowgate-Anything") != "" {
					t.Errorf("credentials or client X-Flowgate-* headers reached the backend: %v", h)
				}
			}
			spoofed := func(tb testing.TB) http.Header {
				h := c.header(tb)
				h.Set("X-Flowgate-Tenant", "victim")
				h.Set("X-Flowgate-Subject", "root")
				h.Set("X-Flowgate-Anything", "x")
				return h
			}
			t.Run("rest", func(t *testing.T) {
				t.Parallel()
				m := marker("ok", c.name, "rest")
				res := doREST(t, http.MethodPost, f.url+"/api/v1/workflow/execute", strings.NewReader(executeJSON(m, false)), spoofed(t))
				if res.status != http.StatusOK {
					t.Fatalf("status %d: %s", res.status, res.body)
				}
				check(t, m)
			})
			for _, p := range secProtocols {
				t.Run(p.name, func(t *testing.T) {
					t.Parallel()
					m := marker("ok", c.name, p.name)
					req := connect.NewRequest(executeRequest(m, false))
					for k, v := range spoofed(t) {
						req.Header()[k] = v
					}
					res, err := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), f.url, p.opts...).ExecuteWorkflow(t.Context(), req)
					if err != nil {
						t.Fatal(err)
					}
					if res.Msg.GetResult().GetOutput().GetStringValue() != c.tenant {
						t.Errorf("backend answered for tenant %q", res.Msg.GetResult().GetOutput().GetStringValue())
					}
					check(t, m)
				})
			}
		})
	}
}

func TestPublicProceduresNeedNoCredentials(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	for _, path := range []string{"/health", "/api/v1/health"} {
		if res := doREST(t, http.MethodGet, f.url+path, nil, nil); res.status != http.StatusOK {
			t.Errorf("GET %s: %d", path, res.status)
		}
	}
	res := doREST(t, http.MethodPost, f.url+"/api/v1/webhooks/orders/new", strings.NewReader(`{"x":1}`),
		http.Header{"X-Flowgate-Tenant": {"victim"}})
	if res.status != http.StatusOK {
		t.Fatalf("webhook: %d %s", res.status, res.body)
	}
	got := f.rec.find("orders/new")
	if len(got) != 1 || got[0].header.Get(interceptors.HeaderTenant) != "" {
		t.Errorf("webhook calls %d, headers %v", len(got), got)
	}
	// Reflection is not public unless configured.
	res = doREST(t, http.MethodGet, f.url+"/api/v1/workflow/deployments", nil, nil)
	if res.status != http.StatusUnauthorized {
		t.Errorf("deployments without credentials: %d", res.status)
	}
}

func TestNewSecurityRejectsBadConfig(t *testing.T) {
	t.Parallel()
	cases := map[string]SecurityConfig{
		"short secret":     {SecretKey: "short"},
		"missing key file": {PublicKeyFiles: []string{"/nonexistent/key.pem"}},
		"bad api keys":     {APIKeys: "not json"},
		"bad override":     {RateLimitOverrides: "nope"},
		"bad proxy":        {TrustedProxies: []string{"10.0.0.0/99"}},
		"bad origin":       {AllowedOrigins: []string{"localhost:3000"}},
		"origin with path": {AllowedOrigins: []string{"https://app.test/path"}},
		"negative body":    {MaxBodyBytes: -1},
		"negative rate":    {RateLimitIP: -1},
		"bad redis url":    {RedisURL: "mysql://x", RateLimitIP: 1},
	}
	for name, cfg := range cases {
		if _, err := newSecurity(cfg, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestAccessRulesFromProtoOptions(t *testing.T) {
	t.Parallel()
	var descs []protoreflect.ServiceDescriptor
	for _, s := range services() {
		descs = append(descs, s.desc)
	}
	rules := accessRules(descs, false)
	want := map[string]interceptors.AccessRule{
		"/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow":    {Scope: "workflows:execute"},
		"/workflow.runtime.v1.WorkflowRuntimeService/ListDeployments":  {Scope: "workflows:read"},
		"/workflow.runtime.v1.WorkflowRuntimeService/DeleteDeployment": {Scope: "workflows:write"},
		"/workflow.runtime.v1.WorkflowRuntimeService/TriggerWebhook":   {Public: true},
		"/workflow.agent.v1.WorkflowAgentService/Chat":                 {Scope: "agent:chat"},
		healthCheckProcedure: {Public: true},
	}
	maps.Copy(want, map[string]interceptors.AccessRule{
		"/workflow.engine.v1.WorkflowEngineService/StreamWorkflow":           {Scope: "workflows:execute"},
		"/workflow.runtime.v1.WorkflowRuntimeService/CancelExecution":        {Scope: "workflows:execute"},
		"/workflow.runtime.v1.WorkflowRuntimeService/RetryExecution":         {Scope: "workflows:execute"},
		"/workflow.runtime.v1.WorkflowRuntimeService/ListDeploymentVersions": {Scope: "workflows:read"},
	})
	for proc, rule := range want {
		if rules[proc] != rule {
			t.Errorf("%s: rule %+v, want %+v", proc, rules[proc], rule)
		}
	}
	if _, ok := rules[reflectionV1Procedure]; ok {
		t.Error("reflection public although not configured")
	}
	if !accessRules(descs, true)[reflectionV1Procedure].Public {
		t.Error("reflection not public although configured")
	}
	for _, d := range descs {
		for i := range d.Methods().Len() {
			m := d.Methods().Get(i)
			r := rules["/"+string(d.FullName())+"/"+string(m.Name())]
			if !r.Public && r.Scope == "" {
				t.Errorf("%s.%s has no access rule", d.FullName(), m.Name())
			}
		}
	}
}

// chunkedReader hides its length so the request is sent chunked.
type chunkedReader struct{ r *strings.Reader }

func (c chunkedReader) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestRESTInputLimits(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	auth := bearer(hsToken(t, nil))
	m := marker("chunked", "big")
	res := doREST(t, http.MethodPost, f.url+"/api/v1/workflow/execute", chunkedReader{strings.NewReader(executeJSON(m, true))}, auth)
	if res.status != http.StatusRequestEntityTooLarge || res.code != "PAYLOAD_TOO_LARGE" {
		t.Errorf("chunked oversized body: %d %s", res.status, res.code)
	}
	if len(f.rec.find(m)) != 0 {
		t.Error("the backend saw the oversized call")
	}
	m = marker("chunked", "small")
	if res := doREST(t, http.MethodPost, f.url+"/api/v1/workflow/execute", chunkedReader{strings.NewReader(executeJSON(m, false))}, auth); res.status != http.StatusOK {
		t.Errorf("chunked body within the limit: %d %s", res.status, res.body)
	}
	for _, path := range []string{
		"/api/v1/workflow/deployments/%ff",
		"/api/v1/workflow/deployments?status=%c3%28",
		"/api/v1/chat/stream?session_id=%ff&user_message=x",
		"/api/v1/webhooks/hook?x=%fe",
		"/api/v1/workflow/deployments?status=%zz",
	} {
		res := doREST(t, http.MethodGet, f.url+path, nil, auth)
		if path == "/api/v1/webhooks/hook?x=%fe" {
			res = doREST(t, http.MethodPost, f.url+path, strings.NewReader("{}"), auth)
		}
		if res.status != http.StatusBadRequest || res.code != "VALIDATION_ERROR" {
			t.Errorf("%s: %d %s, want 400 VALIDATION_ERROR", path, res.status, res.code)
		}
	}
	// Header size limit: the server refuses before any handler runs.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, f.url+"/api/v1/health", nil)
	req.Header.Set("X-Padding", strings.Repeat("p", defaultMaxHeaderBytes+4096))
	resp, err := http1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized headers: %d", resp.StatusCode)
	}
}

func TestAuthDisabledWarnsLoudly(t *testing.T) {
	t.Parallel()
	var logs strings.Builder
	sec, err := newSecurity(SecurityConfig{MaxStreamsPerCaller: -1}, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "AUTHENTICATION IS DISABLED") {
		t.Errorf("no loud warning: %s", logs.String())
	}
	if len(sec.interceptors()) != 0 {
		t.Error("an open gateway without limits still runs interceptors")
	}
	logs.Reset()
	if _, err := newSecurity(SecurityConfig{SecretKey: secTestSecret}, nil, slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "DISABLED") || !strings.Contains(logs.String(), "authentication enabled") {
		t.Errorf("auth on: %s", logs.String())
	}
}

// TestHTTP2StreamCap reads the gateway's HTTP/2 SETTINGS frame: the
// concurrent stream cap is what the configuration says. The first SETTINGS
// a cleartext caller sees are the connection splitter's, which must carry
// the cap before either server takes over.
func TestHTTP2StreamCap(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) { c.Security.MaxConcurrentStreams = 17 })
	fr := dialH2(t, f.url)
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		sf, ok := frame.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 17 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (%v), want 17", v, ok)
		}
		if v, ok := sf.Value(http2.SettingMaxHeaderListSize); ok && v > 2*defaultMaxHeaderBytes {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d", v)
		}
		return
	}
}

// TestGatewayServicesUnderAuth: gRPC health is public; server reflection
// needs credentials unless configured public.
func TestGatewayServicesUnderAuth(t *testing.T) {
	t.Parallel()
	for _, public := range []bool{false, true} {
		t.Run(fmt.Sprint("public reflection ", public), func(t *testing.T) {
			t.Parallel()
			f := newSecFixture(t, func(c *Config) { c.Security.PublicReflection = public })
			// The recording backends serve no health service, so the answer
			// is not serving; what matters is that it is an answer.
			if _, err := grpchealth.NewClient(h2cClient(t), f.url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{}); err != nil {
				t.Errorf("health without credentials: %v", err)
			}
			list := func(h http.Header) error {
				stream := grpcreflect.NewClient(h2cClient(t), f.url, connect.WithGRPC()).NewStream(t.Context(), grpcreflect.WithRequestHeaders(h))
				defer stream.Close()
				_, err := stream.ListServices()
				return err
			}
			err := list(nil)
			if public && err != nil {
				t.Errorf("public reflection: %v", err)
			}
			if !public && connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Errorf("reflection without credentials: %v", err)
			}
			if err := list(bearer(hsToken(t, jwt.MapClaims{"scope": ""}))); err != nil {
				t.Errorf("reflection with credentials: %v", err)
			}
		})
	}
}

// TestReadHeaderTimeout: a client that never finishes its headers is cut
// off (slowloris).
func TestReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) { c.Security.ReadHeaderTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn)
	if err != nil {
		t.Fatalf("connection not closed by the server: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("closed after %v", d)
	}
}
