package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flowgate/flowgate/backends/engine"
	"github.com/flowgate/flowgate/backends/store"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

func serveH2C(t testing.TB, pattern string, h http.Handler) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(pattern, h)
	srv := httptest.NewUnstartedServer(mux)
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func h2cClient(t testing.TB) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// deployments is a runtime for the agent's tests: it keeps deployments in
// memory per tenant, enforces unique webhook paths, and records calls.
type deployments struct {
	runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler
	mu      sync.Mutex
	byID    map[string]*runtimev1.Deployment
	tenant  map[string]string
	n       int
	tenants []string
}

func (d *deployments) seen(req connect.AnyRequest) string {
	tenant := req.Header().Get("X-Flowgate-Tenant")
	d.tenants = append(d.tenants, tenant)
	return tenant
}

func (d *deployments) CreateDeployment(_ context.Context, req *connect.Request[runtimev1.CreateDeploymentRequest]) (*connect.Response[runtimev1.CreateDeploymentResponse], error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	tenant := d.seen(req)
	for _, t := range req.Msg.GetTriggers() {
		for _, dep := range d.byID {
			for _, o := range dep.GetTriggers() {
				if t.GetType() == "webhook" && o.GetPath() == t.GetPath() {
					return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("webhook path %q is taken", t.GetPath()))
				}
			}
		}
	}
	d.n++
	dep := &runtimev1.Deployment{
		DeploymentId: fmt.Sprintf("dep-%d", d.n), Name: req.Msg.GetName(), Description: req.Msg.GetDescription(),
		Status: "active", WorkflowDefinition: req.Msg.GetWorkflowDefinition(), Triggers: req.Msg.GetTriggers(),
		CreatedAt: timestamppb.Now(),
	}
	for _, t := range dep.GetTriggers() {
		if t.GetType() == "webhook" {
			dep.WebhookUrl = "http://gateway.test/api/v1/webhooks/" + t.GetPath()
		}
	}
	d.byID[dep.DeploymentId], d.tenant[dep.DeploymentId] = dep, tenant
	return connect.NewResponse(&runtimev1.CreateDeploymentResponse{Deployment: proto.Clone(dep).(*runtimev1.Deployment)}), nil
}

func (d *deployments) GetDeployment(_ context.Context, req *connect.Request[runtimev1.GetDeploymentRequest]) (*connect.Response[runtimev1.GetDeploymentResponse], error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dep, ok := d.byID[req.Msg.GetDeploymentId()]
	if !ok || d.tenant[dep.DeploymentId] != d.seen(req) {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("deployment not found"))
	}
	return connect.NewResponse(&runtimev1.GetDeploymentResponse{Deployment: proto.Clone(dep).(*runtimev1.Deployment)}), nil
}

func (d *deployments) UpdateDeployment(_ context.Context, req *connect.Request[runtimev1.UpdateDeploymentRequest]) (*connect.Response[runtimev1.UpdateDeploymentResponse], error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dep, ok := d.byID[req.Msg.GetDeploymentId()]
	if !ok || d.tenant[dep.DeploymentId] != d.seen(req) {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("deployment not found"))
	}
	dep.WorkflowDefinition, dep.Triggers, dep.Name = req.Msg.GetWorkflowDefinition(), req.Msg.GetTriggers(), req.Msg.GetName()
	return connect.NewResponse(&runtimev1.UpdateDeploymentResponse{Deployment: proto.Clone(dep).(*runtimev1.Deployment)}), nil
}

func (d *deployments) get(id string) *runtimev1.Deployment {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byID[id]
}

type env struct {
	svc     *Service
	client  agentv1connect.WorkflowAgentServiceClient
	runtime *deployments
	db      *store.DB
}

type envOptions struct {
	provider Provider
	db       *store.DB
	runtime  *deployments
}

// newEnv runs the agent with the real engine and a test runtime, each
// behind its Connect handler on loopback h2c, as they are deployed.
func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	ctx := context.Background()
	eng, err := engine.New(engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	client := h2cClient(t)
	enginePath, engineHandler := enginev1connect.NewWorkflowEngineServiceHandler(eng)
	engineURL := serveH2C(t, enginePath, engineHandler)
	if o.runtime == nil {
		o.runtime = &deployments{byID: map[string]*runtimev1.Deployment{}, tenant: map[string]string{}}
	}
	runtimePath, runtimeHandler := runtimev1connect.NewWorkflowRuntimeServiceHandler(o.runtime)
	runtimeURL := serveH2C(t, runtimePath, runtimeHandler)
	if o.db == nil {
		o.db, err = store.Open(ctx, store.Config{DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = o.db.Close() })
	}
	svc, err := New(ctx, Config{
		Store:    o.db,
		Runtime:  runtimev1connect.NewWorkflowRuntimeServiceClient(client, runtimeURL),
		Engine:   enginev1connect.NewWorkflowEngineServiceClient(client, engineURL),
		Provider: o.provider,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Close() })
	agentPath, agentHandler := agentv1connect.NewWorkflowAgentServiceHandler(svc)
	agentURL := serveH2C(t, agentPath, agentHandler)
	return &env{svc: svc, client: agentv1connect.NewWorkflowAgentServiceClient(client, agentURL), runtime: o.runtime, db: o.db}
}

func withTenant[T any](msg *T, tenant string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if tenant != "" {
		req.Header().Set("X-Flowgate-Tenant", tenant)
	}
	return req
}

func (e *env) session(t testing.TB, tenant string) string {
	t.Helper()
	resp, err := e.client.CreateSession(t.(interface{ Context() context.Context }).Context(), withTenant(&agentv1.CreateSessionRequest{Action: "create"}, tenant))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetSessionId()
}

func (e *env) chat(t testing.TB, tenant, sessionID, text string) []string {
	t.Helper()
	stream, err := e.client.Chat(t.(interface{ Context() context.Context }).Context(), withTenant(&agentv1.ChatRequest{SessionId: sessionID, UserMessage: text}, tenant))
	if err != nil {
		t.Fatal(err)
	}
	var pieces []string
	for stream.Receive() {
		if stream.Msg().GetType() != "message" {
			t.Errorf("chat event type %q", stream.Msg().GetType())
		}
		pieces = append(pieces, stream.Msg().GetContent())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("chat: %v", err)
	}
	return pieces
}

// watch collects generation events until the stream ends or stop says so.
func (e *env) watch(t testing.TB, tenant, sessionID, after string, stop func(*agentv1.WatchGenerationResponse) bool) []*agentv1.WatchGenerationResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.(interface{ Context() context.Context }).Context(), 20*time.Second)
	defer cancel()
	stream, err := e.client.WatchGeneration(ctx, withTenant(&agentv1.WatchGenerationRequest{SessionId: sessionID, AfterEventId: after}, tenant))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var out []*agentv1.WatchGenerationResponse
	for stream.Receive() {
		out = append(out, stream.Msg())
		if stop != nil && stop(stream.Msg()) {
			return out
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("watch: %v (after %d events)", err, len(out))
	}
	return out
}

func types(events []*agentv1.WatchGenerationResponse) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.GetType()
		if e.GetType() == eventDebugging {
			out[i] += ":" + e.GetData().GetFields()["stage"].GetStringValue() + ":" + e.GetData().GetFields()["status"].GetStringValue()
		}
	}
	return out
}
