package server

import (
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// executionHooks give REST callers 202 Accepted for a run the runtime
// answered before it finished (a manual run that has not ended within its
// wait, a retry), as webhooks answer an asynchronous run.
func executionHooks() map[string]methodHooks {
	return map[string]methodHooks{
		runtimev1connect.WorkflowRuntimeServiceRunDeploymentProcedure: {
			response: acceptedWhileRunning(func() executionHolder { return &runtimev1.RunDeploymentResponse{} }),
		},
		runtimev1connect.WorkflowRuntimeServiceRetryExecutionProcedure: {
			response: acceptedWhileRunning(func() executionHolder { return &runtimev1.RetryExecutionResponse{} }),
		},
	}
}

// executionHolder is a response message carrying one execution.
type executionHolder interface {
	proto.Message
	GetExecution() *runtimev1.Execution
}

func acceptedWhileRunning(newMsg func() executionHolder) func(*connect.Response[frame]) error {
	return func(res *connect.Response[frame]) error {
		msg := newMsg()
		if err := proto.Unmarshal(res.Msg.data, msg); err != nil {
			return connect.NewError(connect.CodeInternal, errorText("malformed execution response"))
		}
		if msg.GetExecution().GetStatus() == "running" {
			res.Header().Set(statusHeader, strconv.Itoa(http.StatusAccepted))
		}
		return nil
	}
}
