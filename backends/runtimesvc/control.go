package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// cancelWait bounds how long CancelExecution waits for the run to stop
// and be recorded.
const cancelWait = 10 * time.Second

// CancelExecution stops a running execution of the caller's tenant; it
// ends canceled, with the results of the nodes that had finished. Only the
// process running the execution can stop it: with several replicas, a
// call that reaches another one is refused as Unavailable, to be retried.
func (s *Service) CancelExecution(ctx context.Context, req *connect.Request[runtimev1.CancelExecutionRequest]) (*connect.Response[runtimev1.CancelExecutionResponse], error) {
	tenant, id := tenantOf(req.Header()), req.Msg.GetExecutionId()
	e, err := s.loadExecution(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	if e.status != statusRunning {
		// 409 to REST callers, as for a paused deployment: the state refuses it.
		return nil, connect.NewError(connect.CodeAborted, fmt.Errorf("execution %q is not running; it is %s", id, e.status))
	}
	s.mu.Lock()
	st := s.active[id]
	s.mu.Unlock()
	if st == nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("execution %q runs in another runtime process; try again", id))
	}
	st.cancel(errCanceledByCaller)
	t := time.NewTimer(cancelWait)
	defer t.Stop()
	select {
	case <-st.done:
	case <-t.C:
		return nil, connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("execution %q did not stop in %s", id, cancelWait))
	case <-ctx.Done():
		return nil, s.internal(ctx, "cancel execution", ctx.Err())
	}
	if e, err = s.loadExecution(ctx, tenant, id); err != nil {
		return nil, err
	}
	return connect.NewResponse(&runtimev1.CancelExecutionResponse{Execution: e.toProto(true)}), nil
}

// RetryExecution runs a finished execution's deployment again, as it is
// now, with the same trigger data. The new execution is returned running.
func (s *Service) RetryExecution(ctx context.Context, req *connect.Request[runtimev1.RetryExecutionRequest]) (*connect.Response[runtimev1.RetryExecutionResponse], error) {
	tenant, id := tenantOf(req.Header()), req.Msg.GetExecutionId()
	e, err := s.repo.getExecution(ctx, tenant, id)
	if err != nil {
		return nil, s.lookupError(ctx, "execution", id, err)
	}
	if e.status == statusRunning {
		return nil, connect.NewError(connect.CodeAborted, fmt.Errorf("execution %q is still running", id))
	}
	d, err := s.repo.getDeployment(ctx, tenant, e.deploymentID)
	if errors.Is(err, errNotFound) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the deployment of execution %q was deleted", id))
	}
	if err != nil {
		return nil, s.internal(ctx, "read deployment", err)
	}
	if d.status != deploymentActive {
		return nil, errPaused()
	}
	st, _, err := s.start(ctx, launch{d: d, triggerType: e.triggerType, triggerData: e.triggerData, retryOf: e.id})
	if err != nil {
		return nil, s.internal(ctx, "start execution", err)
	}
	return connect.NewResponse(&runtimev1.RetryExecutionResponse{Execution: st.first}), nil
}
