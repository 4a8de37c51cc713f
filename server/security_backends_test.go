package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/golang-jwt/jwt/v5"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/store/storetest"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

// Keys of the scoped-gateway fixture, all in one tenant.
const (
	keyReader   = "reader-key-0123456789"   // workflows:read
	keyWriter   = "writer-key-0123456789"   // workflows:read workflows:write
	keyDeployer = "deployer-key-0123456789" // read, write and execute
	keyChatter  = "chatter-key-0123456789"  // agent:chat
)

// scopedGateway is a gateway with API keys of different scopes in front
// of the reference backends, whose addresses it returns too.
type scopedGateway struct {
	url                    string
	agent, runtime, engine string
}

func startScopedGateway(t *testing.T, bcfg backends.Config) scopedGateway {
	t.Helper()
	key := func(k, sub, scopes string) string {
		return `{"sha256":"` + interceptors.HashAPIKey(k) + `","subject":"` + sub + `","tenant":"acme","scopes":[` + scopes + `]}`
	}
	cfg := Config{MaxTimeout: 30 * time.Second, Security: SecurityConfig{APIKeys: "[" + strings.Join([]string{
		key(keyReader, "reader", `"workflows:read"`),
		key(keyWriter, "writer", `"workflows:read","workflows:write"`),
		key(keyDeployer, "deployer", `"workflows:read","workflows:write","workflows:execute"`),
		key(keyChatter, "chatter", `"agent:chat"`),
	}, ",") + "]"}}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, bcfg)
	_, url := startGateway(t, cfg)
	return scopedGateway{url: url, agent: cfg.Agent.Address, runtime: cfg.Runtime.Address, engine: cfg.Engine.Address}
}

func apiKey(k string) http.Header { return http.Header{"X-Api-Key": {k}} }

// deploy creates tenantDeployment as the deployer and returns its id.
func (g scopedGateway) deploy(t *testing.T) string {
	t.Helper()
	res := doREST(t, http.MethodPost, g.url+"/api/v1/workflow/deployments", strings.NewReader(tenantDeployment), apiKey(keyDeployer))
	var dep struct {
		ID string `json:"deployment_id"`
	}
	if res.status != http.StatusOK || json.Unmarshal(res.body, &dep) != nil || dep.ID == "" {
		t.Fatalf("create as deployer: %d %s", res.status, res.body)
	}
	return dep.ID
}

// TestBackendsRefuseCallsWithoutGatewayToken: a caller that reaches a
// backend directly, past the gateway, gets nothing with forged identity
// headers or a token signed with another key, on every service; the
// gateway's own calls pass.
func TestBackendsRefuseCallsWithoutGatewayToken(t *testing.T) {
	t.Parallel()
	g := startScopedGateway(t, backends.Config{})
	g.deploy(t)
	forged := func(h http.Header, token string) {
		h.Set(interceptors.HeaderTenant, "acme")
		h.Set(interceptors.HeaderSubject, "root")
		h.Set(interceptors.HeaderScopes, "workflows:read workflows:write workflows:execute agent:chat")
		if token != "" {
			h.Set(interceptors.HeaderToken, token)
		}
	}
	otherKey, _ := interceptors.NewBackendTokens([]byte("not-the-backends-key-0123456789abcdef"), nil)
	wrongToken, _ := otherKey.Header("root", "acme", "workflows:read workflows:write workflows:execute agent:chat")
	for name, tc := range map[string]struct{ token, want string }{
		"forged headers":            {"", "missing gateway token"},
		"token of another key":      {wrongToken[0], "invalid gateway token"},
		"garbage token":             {"x.y.z", "invalid gateway token"},
		"unsigned token (alg none)": {token(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", jwt.MapClaims{"iss": "flowgate", "aud": "flowgate-backends"}), "invalid gateway token"},
	} {
		for _, p := range secProtocols {
			t.Run(name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				ctx := t.Context()
				rt := runtimev1connect.NewWorkflowRuntimeServiceClient(h2cClient(t), "http://"+g.runtime, p.opts...)
				list := connect.NewRequest(&runtimev1.ListDeploymentsRequest{})
				forged(list.Header(), tc.token)
				res, err := rt.ListDeployments(ctx, list)
				checkRefused(t, "runtime", err, tc.want)
				if res != nil && len(res.Msg.GetDeployments()) > 0 {
					t.Errorf("listed %d deployments of tenant acme", len(res.Msg.GetDeployments()))
				}
				exec := connect.NewRequest(executeRequest("direct", false))
				forged(exec.Header(), tc.token)
				_, err = enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), "http://"+g.engine, p.opts...).ExecuteWorkflow(ctx, exec)
				checkRefused(t, "engine", err, tc.want)
				sess := connect.NewRequest(&agentv1.CreateSessionRequest{Action: "create"})
				forged(sess.Header(), tc.token)
				_, err = agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), "http://"+g.agent, p.opts...).CreateSession(ctx, sess)
				checkRefused(t, "agent", err, tc.want)
			})
		}
	}
	t.Run("reflection and health", func(t *testing.T) {
		t.Parallel()
		stream := grpcreflect.NewClient(h2cClient(t), "http://"+g.runtime, connect.WithGRPC()).NewStream(t.Context())
		defer stream.Close()
		if _, err := stream.ListServices(); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("reflection without a token: %v", err)
		}
		res, err := grpchealth.NewClient(h2cClient(t), "http://"+g.runtime, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
		if err != nil || res.Status != grpchealth.StatusServing {
			t.Errorf("health is for probes and needs no token: %v %v", res, err)
		}
	})
	t.Run("through the gateway", func(t *testing.T) {
		t.Parallel()
		res := doREST(t, http.MethodGet, g.url+"/api/v1/workflow/deployments", nil, apiKey(keyReader))
		if res.status != http.StatusOK || !strings.Contains(string(res.body), "tenant-probe") {
			t.Errorf("list through the gateway: %d %s", res.status, res.body)
		}
	})
}

func checkRefused(t *testing.T, service string, err error, want string) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), want) {
		t.Errorf("%s: %v, want unauthenticated: %s", service, err, want)
	}
}

// TestDeployingNeedsExecute: triggers run code, so a key that may write
// but not execute can neither create nor change a deployment, at the
// gateway or directly at the runtime with a valid gateway token of its
// scopes; deleting needs write alone.
func TestDeployingNeedsExecute(t *testing.T) {
	t.Parallel()
	g := startScopedGateway(t, backends.Config{})
	id := g.deploy(t)
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, "/api/v1/workflow/deployments", tenantDeployment},
		{http.MethodPut, "/api/v1/workflow/deployments/" + id, tenantDeployment},
	} {
		res := doREST(t, c.method, g.url+c.path, strings.NewReader(c.body), apiKey(keyWriter))
		if res.status != http.StatusForbidden || res.code != "FORBIDDEN" || !strings.Contains(string(res.body), "workflows:execute") {
			t.Errorf("%s %s as writer: %d %s", c.method, c.path, res.status, res.body)
		}
	}
	tokens, _ := interceptors.NewBackendTokens([]byte(testBackendKey), nil)
	writer, _ := tokens.Header("writer", "acme", "workflows:read workflows:write")
	rt := runtimev1connect.NewWorkflowRuntimeServiceClient(h2cClient(t), "http://"+g.runtime, connect.WithGRPC())
	req := connect.NewRequest(&runtimev1.CreateDeploymentRequest{Name: "direct"})
	req.Header()[interceptors.HeaderToken] = writer
	if _, err := rt.CreateDeployment(t.Context(), req); connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "workflows:execute") {
		t.Errorf("runtime, write-only token: %v", err)
	}
	if res := doREST(t, http.MethodDelete, g.url+"/api/v1/workflow/deployments/"+id, nil, apiKey(keyWriter)); res.status != http.StatusOK {
		t.Errorf("delete as writer: %d %s", res.status, res.body)
	}
}

// TestExecutionControlNeedsExecute: cancelling and retrying executions run
// (or stop) workflows, so a reader may list versions but not do either.
func TestExecutionControlNeedsExecute(t *testing.T) {
	t.Parallel()
	g := startScopedGateway(t, backends.Config{})
	id := g.deploy(t)
	for _, op := range []string{"cancel", "retry"} {
		res := doREST(t, http.MethodPost, g.url+"/api/v1/executions/some-id/"+op, strings.NewReader(`{}`), apiKey(keyReader))
		if res.status != http.StatusForbidden || res.code != "FORBIDDEN" || !strings.Contains(string(res.body), "workflows:execute") {
			t.Errorf("%s as reader: %d %s", op, res.status, res.body)
		}
		if res := doREST(t, http.MethodPost, g.url+"/api/v1/executions/some-id/"+op, strings.NewReader(`{}`), apiKey(keyDeployer)); res.status != http.StatusNotFound {
			t.Errorf("%s of an unknown execution as deployer: %d %s", op, res.status, res.body)
		}
	}
	res := doREST(t, http.MethodGet, g.url+"/api/v1/workflow/deployments/"+id+"/versions", nil, apiKey(keyReader))
	if res.status != http.StatusOK || !strings.Contains(string(res.body), `"version":1`) {
		t.Errorf("versions as reader: %d %s", res.status, res.body)
	}
}

// TestAgentActsWithTheCallersScopes: a key holding only agent:chat cannot
// have the agent read a workflow for it (an edit session) or deploy one:
// the agent calls the runtime as its caller, and the runtime enforces the
// caller's scopes.
func TestAgentActsWithTheCallersScopes(t *testing.T) {
	t.Parallel()
	g := startScopedGateway(t, backends.Config{})
	id := g.deploy(t)
	res := doREST(t, http.MethodPost, g.url+"/api/v1/session", strings.NewReader(`{"action":"edit","workflow_id":"`+id+`"}`), apiKey(keyChatter))
	if res.status != http.StatusForbidden || res.code != "FORBIDDEN" || !strings.Contains(string(res.body), "workflows:read") {
		t.Errorf("edit session as chatter: %d %s", res.status, res.body)
	}
	if res := doREST(t, http.MethodPost, g.url+"/api/v1/session", strings.NewReader(`{"action":"edit","workflow_id":"`+id+`"}`), apiKey(keyReader)); res.status != http.StatusForbidden {
		t.Errorf("edit session as reader without agent:chat: %d %s", res.status, res.body)
	}

	agent := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), g.url, connect.WithGRPC())
	sess, err := agent.CreateSession(t.Context(), withKey(connect.NewRequest(&agentv1.CreateSessionRequest{Action: "create"}), keyChatter))
	if err != nil {
		t.Fatal(err)
	}
	sid := sess.Msg.GetSessionId()
	chat, err := agent.Chat(t.Context(), withKey(connect.NewRequest(&agentv1.ChatRequest{SessionId: sid, UserMessage: orderMessage}), keyChatter))
	if err != nil {
		t.Fatal(err)
	}
	for chat.Receive() {
	}
	if err := chat.Err(); err != nil {
		t.Fatal(err)
	}
	_ = chat.Close()
	last := lastGenerationEvent(t, agent, sid, keyChatter)
	if last.GetType() != "error" || !strings.Contains(last.GetData().String(), "workflows:") {
		t.Errorf("generation for a chat-only key ended with %v", last)
	}
	list := doREST(t, http.MethodGet, g.url+"/api/v1/workflow/deployments", nil, apiKey(keyReader))
	if strings.Count(string(list.body), `"deployment_id"`) != 1 {
		t.Errorf("the agent deployed for a chat-only key: %s", list.body)
	}
}

func withKey[T any](req *connect.Request[T], key string) *connect.Request[T] {
	req.Header().Set("X-Api-Key", key)
	return req
}

// lastGenerationEvent watches a session's generation to its end.
func lastGenerationEvent(t *testing.T, agent agentv1connect.WorkflowAgentServiceClient, sid, key string) *agentv1.WatchGenerationResponse {
	t.Helper()
	stream, err := agent.WatchGeneration(t.Context(), withKey(connect.NewRequest(&agentv1.WatchGenerationRequest{SessionId: sid}), key))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var last *agentv1.WatchGenerationResponse
	for stream.Receive() {
		last = stream.Msg()
		if last.GetType() == "complete" || last.GetType() == "error" {
			return last
		}
	}
	t.Fatalf("generation stream ended without an outcome: %v", stream.Err())
	return nil
}

// TestNULInTextIsInvalidOnPostgres: PostgreSQL text cannot hold NUL, so a
// name, a message or an id holding one is the caller's error (400), not
// a failed backend (500).
func TestNULInTextIsInvalidOnPostgres(t *testing.T) {
	t.Parallel()
	dbURL, _ := storetest.PostgresSchema(t)
	g := startScopedGateway(t, backends.Config{DatabaseURL: dbURL})
	id := g.deploy(t)
	nulDeployment := strings.Replace(tenantDeployment, `"name":"tenant-probe"`, `"name":"tenant\u0000probe"`, 1)
	sess := doREST(t, http.MethodPost, g.url+"/api/v1/session", strings.NewReader(`{"action":"create"}`), apiKey(keyChatter))
	var s struct {
		ID string `json:"session_id"`
	}
	if err := json.Unmarshal(sess.body, &s); err != nil || s.ID == "" {
		t.Fatalf("session: %d %s", sess.status, sess.body)
	}
	for _, c := range []struct {
		name, method, path, body, key, field string
	}{
		{"deployment name", http.MethodPost, "/api/v1/workflow/deployments", nulDeployment, keyDeployer, "name"},
		{"updated name", http.MethodPut, "/api/v1/workflow/deployments/" + id, nulDeployment, keyDeployer, "name"},
		{"deployment id", http.MethodGet, "/api/v1/workflow/deployments/a%00b", "", keyReader, "deployment_id"},
		{"execution id", http.MethodGet, "/api/v1/executions/a%00b", "", keyReader, "execution_id"},
		{"edited workflow id", http.MethodPost, "/api/v1/session", `{"action":"edit","workflow_id":"a\u0000b"}`, keyChatter, "workflow_id"},
		{"chat message", http.MethodGet, "/api/v1/chat/stream?session_id=" + s.ID + "&user_message=hi%00there", "", keyChatter, "user_message"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var res restResult
			if c.body != "" {
				res = doREST(t, c.method, g.url+c.path, strings.NewReader(c.body), apiKey(c.key))
			} else {
				res = doREST(t, c.method, g.url+c.path, nil, apiKey(c.key))
			}
			if res.status != http.StatusBadRequest || res.code != "VALIDATION_ERROR" || !strings.Contains(string(res.body), `"field":"`+c.field+`"`) {
				t.Errorf("%d %s, want 400 VALIDATION_ERROR naming %s", res.status, res.body, c.field)
			}
		})
	}
	runtime := runtimev1connect.NewWorkflowRuntimeServiceClient(h2cClient(t), g.url, connect.WithGRPC())
	_, err := runtime.ListExecutions(t.Context(), withKey(connect.NewRequest(&runtimev1.ListExecutionsRequest{Status: "x\x00"}), keyReader))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("gRPC status filter with NUL: %v", err)
	}
	_, err = enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), g.url, connect.WithGRPC()).ExecuteWorkflow(t.Context(),
		withKey(connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "n\x00"}, ValidateOnly: true}), keyDeployer))
	if connect.CodeOf(err) == connect.CodeInternal || connect.CodeOf(err) == connect.CodeUnknown {
		t.Errorf("engine, NUL in a name it does not store: %v", err)
	}
}
