package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	"github.com/flowgate/flowgate/backends"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// startReferenceGateway runs the reference backends on SQLite behind a
// gateway with authentication on.
func startReferenceGateway(t *testing.T) string {
	t.Helper()
	sec, _ := secConfig(t)
	cfg := Config{MaxTimeout: 30 * time.Second, Security: sec}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{})
	_, url := startGateway(t, cfg)
	return url
}

const tenantDeployment = `{"name":"tenant-probe","workflow_definition":{"name":"tenant-probe","nodes":[` +
	`{"id":"start","type":"trigger"},{"id":"done","type":"respond","parameters":{"body":"ok"}}],` +
	`"connections":[{"source":"start","target":"done"}]},"triggers":[{"type":"manual"}]}`

// TestCrossTenantAccessThroughTheGateway: tenant B can neither see, change,
// delete nor run tenant A's deployments, executions or sessions, on any
// protocol, even when claiming A's tenant in a header.
func TestCrossTenantAccessThroughTheGateway(t *testing.T) {
	t.Parallel()
	url := startReferenceGateway(t)
	tokA := hsToken(t, jwt.MapClaims{"sub": "ann", "tenant": "tenant-a"})
	tokB := hsToken(t, jwt.MapClaims{"sub": "bob", "tenant": "tenant-b"})

	res := doREST(t, http.MethodPost, url+"/api/v1/workflow/deployments", strings.NewReader(tenantDeployment), bearer(tokA))
	var dep struct {
		ID string `json:"deployment_id"`
	}
	if res.status != http.StatusOK || json.Unmarshal(res.body, &dep) != nil || dep.ID == "" {
		t.Fatalf("create as A: %d %s", res.status, res.body)
	}
	res = doREST(t, http.MethodPost, url+"/api/v1/workflow/deployments/"+dep.ID+"/run", strings.NewReader(`{}`), bearer(tokA))
	var exec struct {
		ID string `json:"execution_id"`
	}
	if res.status != http.StatusAccepted || json.Unmarshal(res.body, &exec) != nil || exec.ID == "" {
		t.Fatalf("run as A: %d %s", res.status, res.body)
	}
	session, err := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url).CreateSession(t.Context(),
		withAuth(connect.NewRequest(&agentv1.CreateSessionRequest{Action: "create"}), tokA, ""))
	if err != nil {
		t.Fatalf("session as A: %v", err)
	}

	asB := bearer(tokB)
	spoofB := bearer(tokB)
	spoofB.Set("X-Flowgate-Tenant", "tenant-a")
	t.Run("attempts", func(t *testing.T) {
		crossTenantAttempts(t, url, dep.ID, exec.ID, session.Msg.GetSessionId(), tokB, asB, spoofB)
	})
	// After all of B's attempts, A's deployment is intact.
	res = doREST(t, http.MethodGet, url+"/api/v1/workflow/deployments/"+dep.ID, nil, bearer(tokA))
	if res.status != http.StatusOK || !strings.Contains(string(res.body), `"tenant-probe"`) {
		t.Errorf("A's deployment after B's attempts: %d %s", res.status, res.body)
	}
}

func crossTenantAttempts(t *testing.T, url, depID, execID, sessionID, tokB string, asB, spoofB http.Header) {
	dep := struct{ ID string }{depID}
	exec := struct{ ID string }{execID}
	for name, h := range map[string]http.Header{"B": asB, "B claiming A": spoofB} {
		t.Run(name+"/rest", func(t *testing.T) {
			t.Parallel()
			for _, c := range []struct{ method, path, body string }{
				{http.MethodGet, "/api/v1/workflow/deployments/" + dep.ID, ""},
				{http.MethodPut, "/api/v1/workflow/deployments/" + dep.ID, `{"name":"stolen"}`},
				{http.MethodDelete, "/api/v1/workflow/deployments/" + dep.ID, ""},
				{http.MethodPost, "/api/v1/workflow/deployments/" + dep.ID + "/run", `{}`},
				{http.MethodGet, "/api/v1/executions/" + exec.ID, ""},
			} {
				var body *strings.Reader
				if c.body != "" {
					body = strings.NewReader(c.body)
				}
				var res restResult
				if body != nil {
					res = doREST(t, c.method, url+c.path, body, h)
				} else {
					res = doREST(t, c.method, url+c.path, nil, h)
				}
				if res.status != http.StatusNotFound || res.code != "NOT_FOUND" {
					t.Errorf("%s %s: %d %s, want 404 NOT_FOUND", c.method, c.path, res.status, res.code)
				}
			}
			for _, list := range []string{"/api/v1/workflow/deployments", "/api/v1/executions"} {
				res := doREST(t, http.MethodGet, url+list, nil, h)
				if res.status != http.StatusOK || strings.Contains(string(res.body), dep.ID) {
					t.Errorf("GET %s: %d, lists A's rows: %s", list, res.status, res.body)
				}
			}
		})
		for _, p := range secProtocols {
			t.Run(name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				rt := runtimev1connect.NewWorkflowRuntimeServiceClient(h2cClient(t), url, p.opts...)
				ctx := t.Context()
				spoof := h.Get("X-Flowgate-Tenant")
				checks := map[string]error{}
				_, checks["get"] = rt.GetDeployment(ctx, withAuth(connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: dep.ID}), tokB, spoof))
				_, checks["update"] = rt.UpdateDeployment(ctx, withAuth(connect.NewRequest(&runtimev1.UpdateDeploymentRequest{DeploymentId: dep.ID, Name: "stolen"}), tokB, spoof))
				_, checks["delete"] = rt.DeleteDeployment(ctx, withAuth(connect.NewRequest(&runtimev1.DeleteDeploymentRequest{DeploymentId: dep.ID}), tokB, spoof))
				_, checks["run"] = rt.RunDeployment(ctx, withAuth(connect.NewRequest(&runtimev1.RunDeploymentRequest{DeploymentId: dep.ID}), tokB, spoof))
				_, checks["execution"] = rt.GetExecution(ctx, withAuth(connect.NewRequest(&runtimev1.GetExecutionRequest{ExecutionId: exec.ID}), tokB, spoof))
				for op, err := range checks {
					if connect.CodeOf(err) != connect.CodeNotFound {
						t.Errorf("%s: %v, want not found", op, err)
					}
				}
				list, err := rt.ListDeployments(ctx, withAuth(connect.NewRequest(&runtimev1.ListDeploymentsRequest{}), tokB, spoof))
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range list.Msg.GetDeployments() {
					if d.GetDeploymentId() == dep.ID {
						t.Error("B lists A's deployment")
					}
				}
				stream, err := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, p.opts...).WatchGeneration(ctx,
					withAuth(connect.NewRequest(&agentv1.WatchGenerationRequest{SessionId: sessionID}), tokB, spoof))
				if err == nil {
					for stream.Receive() {
						t.Error("B received events of A's session")
						break
					}
					err = stream.Err()
					_ = stream.Close()
				}
				if connect.CodeOf(err) != connect.CodeNotFound {
					t.Errorf("watch A's session: %v, want not found", err)
				}
			})
		}
	}
}

func withAuth[T any](req *connect.Request[T], tok, spoofTenant string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+tok)
	if spoofTenant != "" {
		req.Header().Set("X-Flowgate-Tenant", spoofTenant)
	}
	return req
}
