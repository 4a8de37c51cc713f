package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// recorder remembers what a test backend saw of the calls it served.
type recorder struct {
	mu       sync.Mutex
	headers  []http.Header
	deadline []time.Duration // remaining time at arrival; -1 for none
	canceled chan struct{}
}

func newRecorder() *recorder { return &recorder{canceled: make(chan struct{}, 16)} }

func (r *recorder) record(ctx context.Context, h http.Header) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.headers = append(r.headers, h.Clone())
	left := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	r.deadline = append(r.deadline, left)
}

func (r *recorder) last(tb testing.TB) (http.Header, time.Duration) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.headers) == 0 {
		tb.Fatal("the backend saw no call")
	}
	return r.headers[len(r.headers)-1], r.deadline[len(r.deadline)-1]
}

func (r *recorder) headersOf(tb testing.TB) http.Header {
	tb.Helper()
	h, _ := r.last(tb)
	return h
}

// waitForCalls waits until the backend has seen n calls.
func (r *recorder) waitForCalls(tb testing.TB, n int) {
	tb.Helper()
	for deadline := time.Now().Add(5 * time.Second); r.calls() < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("the backend saw %d calls, want %d", r.calls(), n)
		}
	}
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.headers)
}

// testEngine answers ExecuteWorkflow by the workflow's name, so that a test
// picks the behaviour it needs: "invalid", "missing", "precondition", "slow",
// "huge" (a 64 KiB response); anything else succeeds and echoes the name.
type testEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
	rec *recorder
}

func (e *testEngine) ExecuteWorkflow(ctx context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	e.rec.record(ctx, req.Header())
	switch name := req.Msg.GetWorkflowDefinition().GetName(); name {
	case "invalid":
		err := connect.NewError(connect.CodeInvalidArgument, errors.New("workflow_definition.nodes[0].type: unknown node type"))
		detail, _ := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{
			Field: "workflow_definition.nodes[0].type", Description: "unknown node type \"teleport\"",
		}}})
		err.AddDetail(detail)
		err.Meta().Set("X-Backend-Note", "validated")
		return nil, err
	case "missing":
		return nil, connect.NewError(connect.CodeNotFound, errors.New("no such workflow"))
	case "precondition":
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the workflow is not deployed"))
	case "huge":
		// A response well over the body limits the edge tests configure.
		return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{
			Status: "succeeded", Output: structpb.NewStringValue(strings.Repeat("x", 64<<10)),
		}}), nil
	case "slow":
		select {
		case <-ctx.Done():
			select {
			case e.rec.canceled <- struct{}{}:
			default:
			}
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, errors.New("not canceled")
		}
	default:
		res := connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{
			Status: "succeeded",
			Output: structpb.NewStringValue(name),
		}})
		res.Header().Set("X-Backend-Header", "h")
		res.Header().Set("Grpc-Internal-Thing", "must not pass")
		res.Trailer().Set("X-Backend-Trailer", "t")
		return res, nil
	}
}

// testAgent streams numbered chat messages, a few per second, and reports
// when a stream's context ends before it finished.
type testAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
	rec *recorder
}

func (a *testAgent) Chat(ctx context.Context, req *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	a.rec.record(ctx, req.Header())
	if req.Msg.GetUserMessage() == "precondition" {
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("the session is not open"))
	}
	stream.ResponseHeader().Set("X-Stream-Header", "s")
	for i := range 50 {
		if err := stream.Send(&agentv1.ChatResponse{Type: "message", Content: req.Msg.GetUserMessage() + string(rune('a'+i%26))}); err != nil {
			return err
		}
		if req.Msg.GetUserMessage() == "fail" && i == 1 {
			err := connect.NewError(connect.CodeInternal, errors.New("model went away"))
			if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: "MODEL_GONE", Domain: "agent.test"}); derr == nil {
				err.AddDetail(d)
			}
			return err
		}
		select {
		case <-ctx.Done():
			a.rec.canceled <- struct{}{}
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// testRuntime answers webhooks with what it received, for the hook tests.
type testRuntime struct {
	runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler
	rec  *recorder
	last chan *runtimev1.TriggerWebhookRequest
}

func (r *testRuntime) TriggerWebhook(ctx context.Context, req *connect.Request[runtimev1.TriggerWebhookRequest]) (*connect.Response[runtimev1.TriggerWebhookResponse], error) {
	r.rec.record(ctx, req.Header())
	r.last <- req.Msg
	return connect.NewResponse(&runtimev1.TriggerWebhookResponse{
		ExecutionId: "exec-1",
		Status:      "succeeded",
		StatusCode:  201,
		Headers:     map[string]string{"X-Order": "accepted"},
		Body:        req.Msg.GetBody(),
	}), nil
}

// GetExecution names the id it was asked for in a NotFound error, so that
// tests see exactly what reached the backend.
func (r *testRuntime) GetExecution(ctx context.Context, req *connect.Request[runtimev1.GetExecutionRequest]) (*connect.Response[runtimev1.GetExecutionResponse], error) {
	r.rec.record(ctx, req.Header())
	return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("execution %q not found", req.Msg.GetExecutionId()))
}

// backendSet is the three test backends, each a separate h2c server.
type backendSet struct {
	engine, agent, runtime *recorder
	webhooks               chan *runtimev1.TriggerWebhookRequest
	cfg                    Config
}

func startTestBackends(tb testing.TB) *backendSet {
	tb.Helper()
	b := &backendSet{engine: newRecorder(), agent: newRecorder(), runtime: newRecorder(), webhooks: make(chan *runtimev1.TriggerWebhookRequest, 8)}
	serve := func(path string, h http.Handler) Upstream {
		mux := http.NewServeMux()
		mux.Handle(path, h)
		return Upstream{Address: startH2C(tb, mux).Listener.Addr().String()}
	}
	b.cfg = Config{
		Engine:     serve(enginev1connect.NewWorkflowEngineServiceHandler(&testEngine{rec: b.engine})),
		Agent:      serve(agentv1connect.NewWorkflowAgentServiceHandler(&testAgent{rec: b.agent})),
		Runtime:    serve(runtimev1connect.NewWorkflowRuntimeServiceHandler(&testRuntime{rec: b.runtime, last: b.webhooks})),
		MaxTimeout: 30 * time.Second,
	}
	return b
}
