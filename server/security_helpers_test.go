package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

const secTestSecret = "flowgate-security-test-secret-0123456789"

// secKeys are generated once: RSA key generation is slow.
var secKeys = sync.OnceValue(func() struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
} {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	e, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return struct {
		rsa *rsa.PrivateKey
		ec  *ecdsa.PrivateKey
	}{r, e}
})

// seenCall is what a recording backend saw of one call.
type seenCall struct {
	procedure string
	marker    string
	header    http.Header
}

// secRecorder is the backends' memory: tests assert a hostile call never
// reached it, and what identity an accepted call carried.
type secRecorder struct {
	mu    sync.Mutex
	calls []seenCall
}

func (r *secRecorder) record(procedure, marker string, h http.Header) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, seenCall{procedure: procedure, marker: marker, header: h.Clone()})
}

// find returns the calls that carried marker.
func (r *secRecorder) find(marker string) []seenCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seenCall
	for _, c := range r.calls {
		if c.marker == marker {
			out = append(out, c)
		}
	}
	return out
}

func (r *secRecorder) all() []seenCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenCall(nil), r.calls...)
}

type recEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
	rec *secRecorder
}

func (e recEngine) ExecuteWorkflow(_ context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	name := req.Msg.GetWorkflowDefinition().GetName()
	e.rec.record(enginev1connect.WorkflowEngineServiceExecuteWorkflowProcedure, name, req.Header())
	return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{
		Status: "succeeded", Output: structpb.NewStringValue(req.Header().Get(interceptors.HeaderTenant)),
	}}), nil
}

type recRuntime struct {
	runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler
	rec *secRecorder
}

func (rt recRuntime) ListDeployments(_ context.Context, req *connect.Request[runtimev1.ListDeploymentsRequest]) (*connect.Response[runtimev1.ListDeploymentsResponse], error) {
	rt.rec.record(runtimev1connect.WorkflowRuntimeServiceListDeploymentsProcedure, req.Msg.GetStatus(), req.Header())
	return connect.NewResponse(&runtimev1.ListDeploymentsResponse{}), nil
}

func (rt recRuntime) TriggerWebhook(_ context.Context, req *connect.Request[runtimev1.TriggerWebhookRequest]) (*connect.Response[runtimev1.TriggerWebhookResponse], error) {
	rt.rec.record(runtimev1connect.WorkflowRuntimeServiceTriggerWebhookProcedure, req.Msg.GetPath(), req.Header())
	return connect.NewResponse(&runtimev1.TriggerWebhookResponse{ExecutionId: "e1", Status: "succeeded", StatusCode: 200}), nil
}

type recAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
	rec *secRecorder
}

func (a recAgent) Chat(_ context.Context, req *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	a.rec.record(agentv1connect.WorkflowAgentServiceChatProcedure, req.Msg.GetSessionId(), req.Header())
	for _, word := range []string{"hello", req.Header().Get(interceptors.HeaderSubject)} {
		if err := stream.Send(&agentv1.ChatResponse{Type: "message", Content: word}); err != nil {
			return err
		}
	}
	return nil
}

// startRecordingBackends serves the three recording services and returns
// a gateway config pointing at them.
func startRecordingBackends(tb testing.TB) (*secRecorder, Config) {
	tb.Helper()
	rec := &secRecorder{}
	serve := func(path string, h http.Handler) Upstream {
		mux := http.NewServeMux()
		mux.Handle(path, h)
		return Upstream{Address: startH2C(tb, mux).Listener.Addr().String()}
	}
	return rec, Config{
		Engine:     serve(enginev1connect.NewWorkflowEngineServiceHandler(recEngine{rec: rec})),
		Runtime:    serve(runtimev1connect.NewWorkflowRuntimeServiceHandler(recRuntime{rec: rec})),
		Agent:      serve(agentv1connect.NewWorkflowAgentServiceHandler(recAgent{rec: rec})),
		MaxTimeout: 30 * time.Second,
	}
}

// secFixture is a gateway with every credential source configured.
type secFixture struct {
	url    string
	gw     *Gateway
	rec    *secRecorder
	rsaPEM []byte
}

const (
	testIssuer   = "https://issuer.test"
	testAudience = "flowgate"
	testAPIKey   = "svc-key-0123456789"
	// testTenantlessAPIKey names no tenant: refused unless a default
	// tenant is configured.
	testTenantlessAPIKey = "tenantless-key-0123456789"
	testMaxBody          = 64 << 10
	allTestScopes        = "workflows:read workflows:write workflows:execute agent:chat"
)

func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatal(err)
	}
}

// secConfig returns a security config with HS256, an RSA PEM key (kid
// "rsa1"), a JWKS file holding an EC key (kid "ec1") and one API key.
func secConfig(tb testing.TB) (SecurityConfig, []byte) {
	tb.Helper()
	k := secKeys()
	dir := tb.TempDir()
	der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	if err != nil {
		tb.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	writeFile(tb, filepath.Join(dir, "rsa1.pem"), rsaPEM)
	point, _ := k.ec.PublicKey.Bytes()
	b64 := base64.RawURLEncoding.EncodeToString
	jwks, _ := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "EC", "kid": "ec1", "crv": "P-256", "use": "sig", "x": b64(point[1:33]), "y": b64(point[33:]),
	}}})
	writeFile(tb, filepath.Join(dir, "jwks.json"), jwks)
	return SecurityConfig{
		SecretKey:      secTestSecret,
		PublicKeyFiles: []string{filepath.Join(dir, "rsa1.pem")},
		JWKSURL:        filepath.Join(dir, "jwks.json"),
		Issuer:         testIssuer,
		Audience:       testAudience,
		Leeway:         5 * time.Second,
		APIKeys: `[{"sha256":"` + interceptors.HashAPIKey(testAPIKey) + `","subject":"svc","tenant":"ops",` +
			`"scopes":["workflows:execute","workflows:read"]},` +
			`{"sha256":"` + interceptors.HashAPIKey(testTenantlessAPIKey) + `","subject":"nobody","scopes":["workflows:execute"]}]`,
		MaxBodyBytes: testMaxBody,
	}, rsaPEM
}

func newSecFixture(tb testing.TB, tweak func(*Config)) *secFixture {
	tb.Helper()
	rec, cfg := startRecordingBackends(tb)
	sec, rsaPEM := secConfig(tb)
	cfg.Security = sec
	if tweak != nil {
		tweak(&cfg)
	}
	gw, url := startGateway(tb, cfg)
	return &secFixture{url: url, gw: gw, rec: rec, rsaPEM: rsaPEM}
}

// token mints a token; edit changes the default claims (nil deletes one).
func token(tb testing.TB, method jwt.SigningMethod, key any, kid string, edit jwt.MapClaims) string {
	tb.Helper()
	now := time.Now()
	c := jwt.MapClaims{
		"sub": "alice", "tenant": "acme", "scope": allTestScopes,
		"iss": testIssuer, "aud": testAudience,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range edit {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	t := jwt.NewWithClaims(method, c)
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func hsToken(tb testing.TB, edit jwt.MapClaims) string {
	return token(tb, jwt.SigningMethodHS256, []byte(secTestSecret), "", edit)
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// restResult is a REST response with its decoded contract error, if any.
type restResult struct {
	status int
	header http.Header
	code   string
	body   []byte
}

func doREST(tb testing.TB, method, url string, body io.Reader, h http.Header) restResult {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.(interface{ Context() context.Context }).Context(), method, url, body)
	if err != nil {
		tb.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range h {
		req.Header[k] = v
	}
	res, err := http1Client(tb).Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	out := restResult{status: res.StatusCode, header: res.Header, body: data}
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if res.StatusCode >= 400 {
		if err := json.Unmarshal(data, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			tb.Errorf("%s %s: error body not in the contract's shape: %q", method, url, data)
		}
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			tb.Errorf("%s %s: error content type %q", method, url, ct)
		}
	}
	out.code = e.Error.Code
	return out
}
