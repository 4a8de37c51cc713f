package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// caller makes every RPC of the three services in one protocol. Errors
// come back as connect errors, whatever the protocol, so that one test body
// checks them all.
type caller interface {
	createSession(context.Context, *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error)
	chat(context.Context, *agentv1.ChatRequest) ([]*agentv1.ChatResponse, error)
	watch(context.Context, *agentv1.WatchGenerationRequest, func(*agentv1.WatchGenerationResponse) bool) ([]*agentv1.WatchGenerationResponse, error)
	execute(context.Context, *enginev1.ExecuteWorkflowRequest) (*enginev1.ExecutionResult, error)
	createDeployment(context.Context, *runtimev1.CreateDeploymentRequest) (*runtimev1.Deployment, error)
	listDeployments(context.Context, *runtimev1.ListDeploymentsRequest) (*runtimev1.ListDeploymentsResponse, error)
	getDeployment(context.Context, string) (*runtimev1.Deployment, error)
	updateDeployment(context.Context, *runtimev1.UpdateDeploymentRequest) (*runtimev1.Deployment, error)
	deleteDeployment(context.Context, string) (*runtimev1.DeleteDeploymentResponse, error)
	runDeployment(context.Context, *runtimev1.RunDeploymentRequest) (*runtimev1.Execution, error)
	listExecutions(context.Context, *runtimev1.ListExecutionsRequest) (*runtimev1.ListExecutionsResponse, error)
	getExecution(context.Context, string) (*runtimev1.Execution, error)
	cancelExecution(context.Context, string) (*runtimev1.Execution, error)
	retryExecution(context.Context, string) (*runtimev1.Execution, error)
	listVersions(context.Context, string) (*runtimev1.ListDeploymentVersionsResponse, error)
	// triggerWebhook posts body to the webhook path and returns the status,
	// the response body and the execution id.
	triggerWebhook(ctx context.Context, path, contentType string, body []byte) (int, []byte, string, error)
}

// rpcCaller speaks Connect, gRPC or gRPC-Web through the generated clients.
type rpcCaller struct {
	agent   agentv1connect.WorkflowAgentServiceClient
	runtime runtimev1connect.WorkflowRuntimeServiceClient
	engine  enginev1connect.WorkflowEngineServiceClient
}

func newRPCCaller(client *http.Client, base string, opts ...connect.ClientOption) *rpcCaller {
	return &rpcCaller{
		agent:   agentv1connect.NewWorkflowAgentServiceClient(client, base, opts...),
		runtime: runtimev1connect.NewWorkflowRuntimeServiceClient(client, base, opts...),
		engine:  enginev1connect.NewWorkflowEngineServiceClient(client, base, opts...),
	}
}

func (c *rpcCaller) createSession(ctx context.Context, req *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error) {
	res, err := c.agent.CreateSession(ctx, connect.NewRequest(req))
	return msg(res, err)
}

func (c *rpcCaller) chat(ctx context.Context, req *agentv1.ChatRequest) ([]*agentv1.ChatResponse, error) {
	stream, err := c.agent.Chat(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var out []*agentv1.ChatResponse
	for stream.Receive() {
		out = append(out, stream.Msg())
	}
	return out, stream.Err()
}

func (c *rpcCaller) watch(ctx context.Context, req *agentv1.WatchGenerationRequest, stop func(*agentv1.WatchGenerationResponse) bool) ([]*agentv1.WatchGenerationResponse, error) {
	stream, err := c.agent.WatchGeneration(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var out []*agentv1.WatchGenerationResponse
	for stream.Receive() {
		out = append(out, stream.Msg())
		if stop(stream.Msg()) {
			return out, nil
		}
	}
	return out, stream.Err()
}

func (c *rpcCaller) execute(ctx context.Context, req *enginev1.ExecuteWorkflowRequest) (*enginev1.ExecutionResult, error) {
	res, err := c.engine.ExecuteWorkflow(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetResult(), nil
}

func (c *rpcCaller) createDeployment(ctx context.Context, req *runtimev1.CreateDeploymentRequest) (*runtimev1.Deployment, error) {
	res, err := c.runtime.CreateDeployment(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetDeployment(), nil
}

func (c *rpcCaller) listDeployments(ctx context.Context, req *runtimev1.ListDeploymentsRequest) (*runtimev1.ListDeploymentsResponse, error) {
	res, err := c.runtime.ListDeployments(ctx, connect.NewRequest(req))
	return msg(res, err)
}

func (c *rpcCaller) getDeployment(ctx context.Context, id string) (*runtimev1.Deployment, error) {
	res, err := c.runtime.GetDeployment(ctx, connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetDeployment(), nil
}

func (c *rpcCaller) updateDeployment(ctx context.Context, req *runtimev1.UpdateDeploymentRequest) (*runtimev1.Deployment, error) {
	res, err := c.runtime.UpdateDeployment(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetDeployment(), nil
}

func (c *rpcCaller) deleteDeployment(ctx context.Context, id string) (*runtimev1.DeleteDeploymentResponse, error) {
	res, err := c.runtime.DeleteDeployment(ctx, connect.NewRequest(&runtimev1.DeleteDeploymentRequest{DeploymentId: id}))
	return msg(res, err)
}

func (c *rpcCaller) runDeployment(ctx context.Context, req *runtimev1.RunDeploymentRequest) (*runtimev1.Execution, error) {
	res, err := c.runtime.RunDeployment(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetExecution(), nil
}

func (c *rpcCaller) listExecutions(ctx context.Context, req *runtimev1.ListExecutionsRequest) (*runtimev1.ListExecutionsResponse, error) {
	res, err := c.runtime.ListExecutions(ctx, connect.NewRequest(req))
	return msg(res, err)
}

func (c *rpcCaller) getExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	res, err := c.runtime.GetExecution(ctx, connect.NewRequest(&runtimev1.GetExecutionRequest{ExecutionId: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetExecution(), nil
}

func (c *rpcCaller) cancelExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	res, err := c.runtime.CancelExecution(ctx, connect.NewRequest(&runtimev1.CancelExecutionRequest{ExecutionId: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetExecution(), nil
}

func (c *rpcCaller) retryExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	res, err := c.runtime.RetryExecution(ctx, connect.NewRequest(&runtimev1.RetryExecutionRequest{ExecutionId: id}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetExecution(), nil
}

func (c *rpcCaller) listVersions(ctx context.Context, id string) (*runtimev1.ListDeploymentVersionsResponse, error) {
	res, err := c.runtime.ListDeploymentVersions(ctx, connect.NewRequest(&runtimev1.ListDeploymentVersionsRequest{DeploymentId: id}))
	return msg(res, err)
}

func (c *rpcCaller) triggerWebhook(ctx context.Context, path, contentType string, body []byte) (int, []byte, string, error) {
	res, err := c.runtime.TriggerWebhook(ctx, connect.NewRequest(&runtimev1.TriggerWebhookRequest{
		Path: path,
		Body: &httpbody.HttpBody{ContentType: contentType, Data: body},
	}))
	if err != nil {
		return 0, nil, "", err
	}
	status := int(res.Msg.GetStatusCode())
	if status == 0 {
		status = http.StatusOK
	}
	return status, res.Msg.GetBody().GetData(), res.Msg.GetExecutionId(), nil
}

func msg[T any](res *connect.Response[T], err error) (*T, error) {
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// restCaller speaks the contract's REST surface with plain net/http, and
// the SSE routes for the streams. Bodies are encoded and decoded strictly
// with snake_case names, so a field the gateway renamed or invented fails.
type restCaller struct {
	client *http.Client
	base   string
}

var (
	restMarshal   = protojson.MarshalOptions{UseProtoNames: true}
	restUnmarshal = protojson.UnmarshalOptions{}
)

func (c *restCaller) do(ctx context.Context, method, path string, query url.Values, in, out proto.Message) error {
	code, err := c.doCode(ctx, method, path, query, in, out)
	if err == nil && code != http.StatusOK {
		return fmt.Errorf("%s %s answered %d, want 200", method, path, code)
	}
	return err
}

// doExecution makes a call answering with an execution: 202 Accepted while
// it runs, 200 once it has finished.
func (c *restCaller) doExecution(ctx context.Context, path string, in proto.Message) (*runtimev1.Execution, error) {
	out := &runtimev1.Execution{}
	code, err := c.doCode(ctx, http.MethodPost, path, nil, in, out)
	if err != nil {
		return nil, err
	}
	if want := map[bool]int{true: http.StatusAccepted, false: http.StatusOK}[out.GetStatus() == "running"]; code != want {
		return nil, fmt.Errorf("POST %s answered %d for a %s execution, want %d", path, code, out.GetStatus(), want)
	}
	return out, nil
}

func (c *restCaller) doCode(ctx context.Context, method, path string, query url.Values, in, out proto.Message) (int, error) {
	var body io.Reader
	if in != nil {
		data, err := restMarshal.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(data)
	}
	target := c.base + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusOK && res.StatusCode != http.StatusAccepted {
		return 0, restError(res.StatusCode, data)
	}
	return res.StatusCode, restUnmarshal.Unmarshal(data, out)
}

// restError turns the contract's error body back into a coded error.
func restError(status int, data []byte) error {
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(data, &body); err != nil || body.Error.Code == "" {
		return connect.NewError(connect.CodeUnknown, fmt.Errorf("status %d with a body not in the contract's shape: %q", status, data))
	}
	codes := map[string]connect.Code{
		"VALIDATION_ERROR": connect.CodeInvalidArgument, "UNAUTHORIZED": connect.CodeUnauthenticated,
		"FORBIDDEN": connect.CodePermissionDenied, "NOT_FOUND": connect.CodeNotFound, "CONFLICT": connect.CodeAlreadyExists,
		"RATE_LIMITED": connect.CodeResourceExhausted, "BAD_GATEWAY": connect.CodeUnavailable,
		"GATEWAY_TIMEOUT": connect.CodeDeadlineExceeded, "INTERNAL_ERROR": connect.CodeInternal,
	}
	code, ok := codes[body.Error.Code]
	if !ok {
		code = connect.CodeUnknown
	}
	return connect.NewError(code, fmt.Errorf("%d %s: %s", status, body.Error.Code, body.Error.Message))
}

func (c *restCaller) createSession(ctx context.Context, req *agentv1.CreateSessionRequest) (*agentv1.CreateSessionResponse, error) {
	out := &agentv1.CreateSessionResponse{}
	return out, c.do(ctx, http.MethodPost, "/api/v1/session", nil, req, out)
}

// events reads a Server-Sent-Events stream, decoding each data line into a
// new message, until stop says so or the stream ends.
func events[T proto.Message](ctx context.Context, c *restCaller, path string, query url.Values, lastEventID string, newMsg func() T, stop func(T) bool) ([]T, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path+"?"+query.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	res, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(res.Body)
		return nil, restError(res.StatusCode, data)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return nil, fmt.Errorf("content type %q", ct)
	}
	var out []T
	scanner := bufio.NewScanner(res.Body)
	scanner.Buffer(make([]byte, 64<<10), 4<<20)
	event := ""
	for scanner.Scan() {
		line := scanner.Text()
		switch {
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data := []byte(strings.TrimSpace(strings.TrimPrefix(line, "data:")))
			switch event {
			case "error":
				return out, restError(0, data)
			case "end":
				return out, nil
			}
			m := newMsg()
			if err := restUnmarshal.Unmarshal(data, m); err != nil {
				return out, fmt.Errorf("event %q: %w", data, err)
			}
			out = append(out, m)
			if stop != nil && stop(m) {
				return out, nil
			}
		case line == "":
			event = ""
		}
	}
	return out, scanner.Err()
}

func (c *restCaller) chat(ctx context.Context, req *agentv1.ChatRequest) ([]*agentv1.ChatResponse, error) {
	q := url.Values{"session_id": {req.GetSessionId()}, "user_message": {req.GetUserMessage()}}
	return events(ctx, c, "/api/v1/chat/stream", q, "", func() *agentv1.ChatResponse { return &agentv1.ChatResponse{} }, nil)
}

func (c *restCaller) watch(ctx context.Context, req *agentv1.WatchGenerationRequest, stop func(*agentv1.WatchGenerationResponse) bool) ([]*agentv1.WatchGenerationResponse, error) {
	q := url.Values{"session_id": {req.GetSessionId()}}
	return events(ctx, c, "/api/v1/workflow_generation", q, req.GetAfterEventId(), func() *agentv1.WatchGenerationResponse { return &agentv1.WatchGenerationResponse{} }, stop)
}

func (c *restCaller) execute(ctx context.Context, req *enginev1.ExecuteWorkflowRequest) (*enginev1.ExecutionResult, error) {
	out := &enginev1.ExecutionResult{}
	return out, c.do(ctx, http.MethodPost, "/api/v1/workflow/execute", nil, req, out)
}

func (c *restCaller) createDeployment(ctx context.Context, req *runtimev1.CreateDeploymentRequest) (*runtimev1.Deployment, error) {
	out := &runtimev1.Deployment{}
	return out, c.do(ctx, http.MethodPost, "/api/v1/workflow/deployments", nil, req, out)
}

func (c *restCaller) listDeployments(ctx context.Context, req *runtimev1.ListDeploymentsRequest) (*runtimev1.ListDeploymentsResponse, error) {
	q := url.Values{}
	if req.GetPage() > 0 {
		q.Set("page", strconv.Itoa(int(req.GetPage())))
	}
	if req.GetPageSize() > 0 {
		q.Set("page_size", strconv.Itoa(int(req.GetPageSize())))
	}
	out := &runtimev1.ListDeploymentsResponse{}
	return out, c.do(ctx, http.MethodGet, "/api/v1/workflow/deployments", q, nil, out)
}

func (c *restCaller) getDeployment(ctx context.Context, id string) (*runtimev1.Deployment, error) {
	out := &runtimev1.Deployment{}
	return out, c.do(ctx, http.MethodGet, "/api/v1/workflow/deployments/"+url.PathEscape(id), nil, nil, out)
}

func (c *restCaller) updateDeployment(ctx context.Context, req *runtimev1.UpdateDeploymentRequest) (*runtimev1.Deployment, error) {
	body := proto.CloneOf(req)
	body.DeploymentId = "" // it travels in the path
	out := &runtimev1.Deployment{}
	return out, c.do(ctx, http.MethodPut, "/api/v1/workflow/deployments/"+url.PathEscape(req.GetDeploymentId()), nil, body, out)
}

func (c *restCaller) deleteDeployment(ctx context.Context, id string) (*runtimev1.DeleteDeploymentResponse, error) {
	out := &runtimev1.DeleteDeploymentResponse{}
	return out, c.do(ctx, http.MethodDelete, "/api/v1/workflow/deployments/"+url.PathEscape(id), nil, nil, out)
}

func (c *restCaller) runDeployment(ctx context.Context, req *runtimev1.RunDeploymentRequest) (*runtimev1.Execution, error) {
	body := proto.CloneOf(req)
	body.DeploymentId = ""
	return c.doExecution(ctx, "/api/v1/workflow/deployments/"+url.PathEscape(req.GetDeploymentId())+"/run", body)
}

func (c *restCaller) cancelExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	out := &runtimev1.Execution{}
	return out, c.do(ctx, http.MethodPost, "/api/v1/executions/"+url.PathEscape(id)+"/cancel", nil, &runtimev1.CancelExecutionRequest{}, out)
}

func (c *restCaller) retryExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	return c.doExecution(ctx, "/api/v1/executions/"+url.PathEscape(id)+"/retry", &runtimev1.RetryExecutionRequest{})
}

func (c *restCaller) listVersions(ctx context.Context, id string) (*runtimev1.ListDeploymentVersionsResponse, error) {
	out := &runtimev1.ListDeploymentVersionsResponse{}
	return out, c.do(ctx, http.MethodGet, "/api/v1/workflow/deployments/"+url.PathEscape(id)+"/versions", nil, nil, out)
}

func (c *restCaller) listExecutions(ctx context.Context, req *runtimev1.ListExecutionsRequest) (*runtimev1.ListExecutionsResponse, error) {
	q := url.Values{}
	if req.GetDeploymentId() != "" {
		q.Set("deployment_id", req.GetDeploymentId())
	}
	if req.GetPage() > 0 {
		q.Set("page", strconv.Itoa(int(req.GetPage())))
	}
	if req.GetPageSize() > 0 {
		q.Set("page_size", strconv.Itoa(int(req.GetPageSize())))
	}
	out := &runtimev1.ListExecutionsResponse{}
	return out, c.do(ctx, http.MethodGet, "/api/v1/executions", q, nil, out)
}

func (c *restCaller) getExecution(ctx context.Context, id string) (*runtimev1.Execution, error) {
	out := &runtimev1.Execution{}
	return out, c.do(ctx, http.MethodGet, "/api/v1/executions/"+url.PathEscape(id), nil, nil, out)
}

func (c *restCaller) triggerWebhook(ctx context.Context, path, contentType string, body []byte) (int, []byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/webhooks/"+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", contentType)
	res, err := c.client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, nil, "", err
	}
	if res.StatusCode >= 400 {
		return 0, nil, "", restError(res.StatusCode, data)
	}
	return res.StatusCode, data, res.Header.Get("X-Flowgate-Execution-Id"), nil
}

// callers returns a caller for every protocol the gateway serves.
func callers(t *testing.T, base string) map[string]caller {
	return map[string]caller{
		"rest":    &restCaller{client: http1(t), base: base},
		"connect": newRPCCaller(http1(t), base),
		"grpc":    newRPCCaller(h2c(t), base, connect.WithGRPC()),
		"grpcweb": newRPCCaller(http1(t), base, connect.WithGRPCWeb()),
	}
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
