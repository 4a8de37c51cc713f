package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// greeter is a small workflow: the trigger, a set node, and a respond node
// answering 201 with what the set node built.
func greeter(t *testing.T) *enginev1.WorkflowDefinition {
	t.Helper()
	params := func(m map[string]any) *structpb.Struct {
		s, err := structpb.NewStruct(m)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return &enginev1.WorkflowDefinition{
		Name: "greeter",
		Nodes: []*enginev1.Node{
			{Id: "start", Type: "trigger"},
			{Id: "greet", Type: "set", Parameters: params(map[string]any{"values": map[string]any{"greeting": "hello"}})},
			{Id: "answer", Type: "respond", Parameters: params(map[string]any{"status_code": 201, "body": map[string]any{"ok": true}})},
		},
		Connections: []*enginev1.Connection{{Source: "start", Target: "greet"}, {Source: "greet", Target: "answer"}},
	}
}

// TestEveryRPCEveryProtocol calls every RPC of the three services through
// the gateway in each protocol it serves — REST (and SSE for the streams),
// Connect, gRPC and gRPC-Web — and checks what comes back.
func TestEveryRPCEveryProtocol(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for name, c := range callers(t, s.url) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := withTimeout(t, time.Minute)
			hook := "greet-" + name

			// Engine.
			result, err := c.execute(ctx, &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: greeter(t)})
			if err != nil {
				t.Fatalf("ExecuteWorkflow: %v", err)
			}
			if result.GetStatus() != "succeeded" || len(result.GetNodeResults()) != 3 {
				t.Errorf("ExecuteWorkflow: status %q, %d node results", result.GetStatus(), len(result.GetNodeResults()))
			}

			// Runtime: the life of a deployment.
			dep, err := c.createDeployment(ctx, &runtimev1.CreateDeploymentRequest{
				Name:               "greeter " + name,
				WorkflowDefinition: greeter(t),
				Triggers: []*runtimev1.Trigger{
					{Type: "webhook", Path: hook, ResponseMode: "wait"},
					{Type: "manual"},
				},
			})
			if err != nil {
				t.Fatalf("CreateDeployment: %v", err)
			}
			if dep.GetDeploymentId() == "" || dep.GetStatus() != "active" || dep.GetCreatedAt() == nil {
				t.Errorf("CreateDeployment: %v", dep)
			}
			// The URL is the tenant's namespace, then the trigger's path.
			hookURL, ok := strings.CutPrefix(dep.GetWebhookUrl(), s.url+"/api/v1/webhooks/")
			if ns, path, _ := strings.Cut(hookURL, "/"); !ok || len(ns) != 32 || path != hook {
				t.Errorf("webhook_url = %q, want %s/api/v1/webhooks/<namespace>/%s", dep.GetWebhookUrl(), s.url, hook)
			}
			got, err := c.getDeployment(ctx, dep.GetDeploymentId())
			if err != nil || got.GetName() != "greeter "+name {
				t.Errorf("GetDeployment: %v %v", got, err)
			}
			list, err := c.listDeployments(ctx, &runtimev1.ListDeploymentsRequest{PageSize: 100})
			if err != nil || !slices.ContainsFunc(list.GetDeployments(), func(d *runtimev1.Deployment) bool { return d.GetDeploymentId() == dep.GetDeploymentId() }) {
				t.Errorf("ListDeployments does not list the deployment: %v %v", list, err)
			}
			updated, err := c.updateDeployment(ctx, &runtimev1.UpdateDeploymentRequest{
				DeploymentId:       dep.GetDeploymentId(),
				Name:               "renamed " + name,
				WorkflowDefinition: greeter(t),
				Triggers:           dep.GetTriggers(),
			})
			if err != nil || updated.GetName() != "renamed "+name {
				t.Errorf("UpdateDeployment: %v %v", updated, err)
			}

			status, body, execID, err := c.triggerWebhook(ctx, hookURL, "application/json", []byte(`{"amount":150}`))
			if err != nil {
				t.Fatalf("TriggerWebhook: %v", err)
			}
			var answer map[string]any
			if status != 201 || json.Unmarshal(body, &answer) != nil || answer["ok"] != true || execID == "" {
				t.Errorf("TriggerWebhook: %d %q execution %q", status, body, execID)
			}
			manual, err := c.runDeployment(ctx, &runtimev1.RunDeploymentRequest{DeploymentId: dep.GetDeploymentId(), WaitSeconds: 30})
			if err != nil || manual.GetStatus() != "succeeded" || manual.GetTriggerType() != "manual" || manual.GetDeploymentVersion() != 1 {
				t.Errorf("RunDeployment: %v %v", manual, err)
			}
			execs, err := c.listExecutions(ctx, &runtimev1.ListExecutionsRequest{DeploymentId: dep.GetDeploymentId()})
			if err != nil || execs.GetTotalCount() != 2 || len(execs.GetExecutions()) != 2 {
				t.Errorf("ListExecutions: %v %v", execs, err)
			}
			exec, err := c.getExecution(ctx, execID)
			if err != nil || exec.GetStatus() != "succeeded" || exec.GetTriggerType() != "webhook" || len(exec.GetNodeResults()) != 3 {
				t.Errorf("GetExecution: %v %v", exec, err)
			}

			lifecycle(ctx, t, c, name, s.url)

			// Agent: a session, a chat, and the generation it starts.
			session, err := c.createSession(ctx, &agentv1.CreateSessionRequest{Action: "create"})
			if err != nil || session.GetSessionId() == "" || session.GetCreatedAt() == nil {
				t.Fatalf("CreateSession: %v %v", session, err)
			}
			reply, err := c.chat(ctx, &agentv1.ChatRequest{SessionId: session.GetSessionId(), UserMessage: "when a webhook receives an order over 100, POST it to https://example.com/orders"})
			if err != nil || len(reply) < 2 {
				t.Fatalf("Chat: %d messages, %v", len(reply), err)
			}
			var text strings.Builder
			for _, m := range reply {
				if m.GetType() != "message" {
					t.Errorf("Chat event type %q", m.GetType())
				}
				text.WriteString(m.GetContent())
			}
			if !strings.Contains(text.String(), "https://example.com/orders") {
				t.Errorf("Chat reply: %q", text.String())
			}
			events, err := c.watch(ctx, &agentv1.WatchGenerationRequest{SessionId: session.GetSessionId()}, func(ev *agentv1.WatchGenerationResponse) bool {
				return ev.GetType() == "complete" || ev.GetType() == "error"
			})
			if err != nil || len(events) == 0 {
				t.Fatalf("WatchGeneration: %v", err)
			}
			last := events[len(events)-1]
			if last.GetType() != "complete" || last.GetWorkflowId() == "" {
				t.Errorf("WatchGeneration ended with %v", last)
			}
			if generated, err := c.getDeployment(ctx, last.GetWorkflowId()); err != nil || len(generated.GetWorkflowDefinition().GetNodes()) == 0 {
				t.Errorf("the generated workflow was not deployed: %v %v", generated, err)
			}

			// And the deployment goes away.
			if _, err := c.deleteDeployment(ctx, dep.GetDeploymentId()); err != nil {
				t.Errorf("DeleteDeployment: %v", err)
			}
			if _, err := c.getDeployment(ctx, dep.GetDeploymentId()); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("GetDeployment after delete: %v, want not found", err)
			}
		})
	}
}

// TestErrorsThroughRealBackends checks that the backends' own errors reach
// callers of every protocol with the right code.
func TestErrorsThroughRealBackends(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	for name, c := range callers(t, s.url) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := withTimeout(t, 30*time.Second)
			_, err := c.createSession(ctx, &agentv1.CreateSessionRequest{Action: "destroy"})
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("bad action: %v", err)
			}
			_, err = c.getExecution(ctx, "no-such-execution")
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("unknown execution: %v", err)
			}
			_, err = c.execute(ctx, &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{
				Nodes: []*enginev1.Node{{Id: "a", Type: "teleport"}},
			}})
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument {
				t.Errorf("unknown node type: %v", err)
			}
			_, err = c.chat(ctx, &agentv1.ChatRequest{SessionId: "no-such-session", UserMessage: "hi"})
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("chat in unknown session: %v", err)
			}
		})
	}
}

// lifecycle runs a slow deployment without waiting, cancels the execution,
// retries it, cancels the retry, lists the deployment's versions, and
// pauses it: its webhook then answers with a conflict.
func lifecycle(ctx context.Context, t *testing.T, c caller, name, base string) {
	t.Helper()
	slow := &enginev1.WorkflowDefinition{
		Name: "slow",
		Nodes: []*enginev1.Node{
			{Id: "start", Type: "trigger"},
			{Id: "wait", Type: "delay", Parameters: &structpb.Struct{Fields: map[string]*structpb.Value{"duration": structpb.NewStringValue("30s")}}},
		},
		Connections: []*enginev1.Connection{{Source: "start", Target: "wait"}},
	}
	dep, err := c.createDeployment(ctx, &runtimev1.CreateDeploymentRequest{
		Name: "slow " + name, WorkflowDefinition: slow, RunTimeout: durationpb.New(time.Minute),
		Triggers: []*runtimev1.Trigger{{Type: "manual"}, {Type: "webhook", Path: "slow-" + name}},
	})
	if err != nil {
		t.Fatalf("CreateDeployment: %v", err)
	}
	running, err := c.runDeployment(ctx, &runtimev1.RunDeploymentRequest{DeploymentId: dep.GetDeploymentId()})
	if err != nil || running.GetStatus() != "running" || running.GetExecutionId() == "" {
		t.Fatalf("RunDeployment without waiting: %v %v", running, err)
	}
	canceled, err := c.cancelExecution(ctx, running.GetExecutionId())
	if err != nil || canceled.GetStatus() != "canceled" {
		t.Fatalf("CancelExecution: %v %v", canceled, err)
	}
	retry, err := c.retryExecution(ctx, running.GetExecutionId())
	if err != nil || retry.GetStatus() != "running" || retry.GetRetryOf() != running.GetExecutionId() {
		t.Fatalf("RetryExecution: %v %v", retry, err)
	}
	if _, err := c.cancelExecution(ctx, retry.GetExecutionId()); err != nil {
		t.Errorf("CancelExecution of the retry: %v", err)
	}
	// 409 CONFLICT over REST (read back as AlreadyExists), Aborted elsewhere.
	if _, err := c.cancelExecution(ctx, retry.GetExecutionId()); connect.CodeOf(err) != connect.CodeAborted &&
		(name != "rest" || connect.CodeOf(err) != connect.CodeAlreadyExists) {
		t.Errorf("CancelExecution of a finished execution: %v, want a conflict", err)
	}
	slow.Nodes[1].Parameters.Fields["duration"] = structpb.NewStringValue("20s")
	if _, err := c.updateDeployment(ctx, &runtimev1.UpdateDeploymentRequest{
		DeploymentId: dep.GetDeploymentId(), Name: dep.GetName(), WorkflowDefinition: slow, Triggers: dep.GetTriggers(),
	}); err != nil {
		t.Fatalf("UpdateDeployment: %v", err)
	}
	versions, err := c.listVersions(ctx, dep.GetDeploymentId())
	if err != nil || versions.GetTotalCount() != 2 || len(versions.GetVersions()) != 2 || versions.GetVersions()[0].GetVersion() != 2 {
		t.Errorf("ListDeploymentVersions: %v %v", versions, err)
	}
	if _, err := c.updateDeployment(ctx, &runtimev1.UpdateDeploymentRequest{
		DeploymentId: dep.GetDeploymentId(), Name: dep.GetName(), WorkflowDefinition: slow, Triggers: dep.GetTriggers(), Status: "paused",
	}); err != nil {
		t.Fatalf("pause: %v", err)
	}
	hook := strings.TrimPrefix(dep.GetWebhookUrl(), base+"/api/v1/webhooks/")
	if _, _, _, err := c.triggerWebhook(ctx, hook, "application/json", []byte(`{}`)); connect.CodeOf(err) != connect.CodeAborted &&
		(name != "rest" || !strings.Contains(fmt.Sprint(err), "409 CONFLICT")) {
		t.Errorf("webhook of a paused deployment: %v, want a conflict", err)
	}
}
