package engine

import (
	"context"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// StreamWorkflow runs a definition as [Service.ExecuteWorkflow] does and
// sends an event as each node finishes, one as soon as a respond node has
// answered, and the result last. A caller that goes away cancels the run.
func (s *Service) StreamWorkflow(ctx context.Context, req *connect.Request[enginev1.StreamWorkflowRequest], stream *connect.ServerStream[enginev1.StreamWorkflowResponse]) error {
	msg := req.Msg
	wf, timeout, err := s.prepare(msg.GetWorkflowDefinition(), msg.Timeout)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The run calls observe from its scheduling goroutine only, one event
	// at a time, so sends need no lock. A failed send means the caller is
	// gone: stop.
	var sendErr error
	observe := func(ev *enginev1.StreamWorkflowResponse) {
		if sendErr != nil {
			return
		}
		if sendErr = stream.Send(ev); sendErr != nil {
			cancel()
		}
	}
	result := s.run(ctx, wf, msg.GetTriggerData().AsMap(), timeout, observe)
	if sendErr != nil {
		return errCallerCanceled()
	}
	if err := s.ran(ctx, wf, result); err != nil {
		return err
	}
	return stream.Send(&enginev1.StreamWorkflowResponse{Event: &enginev1.StreamWorkflowResponse_Result{Result: result}})
}
