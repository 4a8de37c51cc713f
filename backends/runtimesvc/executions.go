package runtimesvc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// RunDeployment fires the manual trigger and waits for the execution to
// finish. If the caller goes away first, the execution still completes and
// is recorded.
func (s *Service) RunDeployment(ctx context.Context, req *connect.Request[runtimev1.RunDeploymentRequest]) (*connect.Response[runtimev1.RunDeploymentResponse], error) {
	d, err := s.repo.getDeployment(ctx, tenantOf(req.Header()), req.Msg.GetDeploymentId())
	if err != nil {
		return nil, s.lookupError(ctx, "deployment", req.Msg.GetDeploymentId(), err)
	}
	if findTrigger(d.triggers, triggerManual) == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the deployment has no manual trigger"))
	}
	if d.status != deploymentActive {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the deployment is paused"))
	}
	st, _, err := s.start(ctx, launch{d: d, triggerType: triggerManual, triggerData: req.Msg.GetTriggerData()})
	if err != nil {
		return nil, s.internal(ctx, "start execution", err)
	}
	select {
	case <-st.done:
	case <-ctx.Done():
		return nil, s.internal(ctx, "run deployment", ctx.Err())
	}
	return connect.NewResponse(&runtimev1.RunDeploymentResponse{Execution: st.e.toProto(true)}), nil
}

// GetExecution returns one execution of the caller's tenant with its node
// results.
func (s *Service) GetExecution(ctx context.Context, req *connect.Request[runtimev1.GetExecutionRequest]) (*connect.Response[runtimev1.GetExecutionResponse], error) {
	e, err := s.repo.getExecution(ctx, tenantOf(req.Header()), req.Msg.GetExecutionId())
	if err != nil {
		return nil, s.lookupError(ctx, "execution", req.Msg.GetExecutionId(), err)
	}
	return connect.NewResponse(&runtimev1.GetExecutionResponse{Execution: e.toProto(true)}), nil
}

// ListExecutions pages through the tenant's executions, newest first.
func (s *Service) ListExecutions(ctx context.Context, req *connect.Request[runtimev1.ListExecutionsRequest]) (*connect.Response[runtimev1.ListExecutionsResponse], error) {
	msg := req.Msg
	f := executionFilter{tenant: tenantOf(req.Header()), deploymentID: msg.GetDeploymentId(), status: msg.GetStatus()}
	if f.status != "" && f.status != statusRunning && !finalStatuses[f.status] {
		return nil, invalid("status", "must be one of running, succeeded, failed, timed_out, canceled, interrupted")
	}
	pg, err := parsePaging(msg.GetPage(), msg.GetPageSize(), msg.GetPageToken(), f.key())
	if err != nil {
		return nil, err
	}
	page, err := s.repo.listExecutions(ctx, f, pg)
	if err != nil {
		return nil, s.internal(ctx, "list executions", err)
	}
	out := &runtimev1.ListExecutionsResponse{
		TotalCount: clampInt32(page.total), Page: pg.page, PageSize: pg.size, NextPageToken: page.next,
		Executions: make([]*runtimev1.Execution, 0, len(page.items)),
	}
	for _, e := range page.items {
		out.Executions = append(out.Executions, e.toProto(false))
	}
	return connect.NewResponse(out), nil
}

// waitFor waits up to d for st to finish.
func waitFor(ctx context.Context, st *started, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-st.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}
