package runtimesvc

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// maxRunWait caps RunDeploymentRequest.wait_seconds.
const maxRunWait = 300

// RunDeployment fires the manual trigger and answers with the execution at
// once, or when it finishes within the caller's wait_seconds; a run still
// going then is answered with status running. Either way the execution
// completes and is recorded.
func (s *Service) RunDeployment(ctx context.Context, req *connect.Request[runtimev1.RunDeploymentRequest]) (*connect.Response[runtimev1.RunDeploymentResponse], error) {
	if w := req.Msg.GetWaitSeconds(); w < 0 || w > maxRunWait {
		return nil, invalid("wait_seconds", "must be 0 to %d", maxRunWait)
	}
	d, err := s.repo.getDeployment(ctx, tenantOf(req.Header()), req.Msg.GetDeploymentId())
	if err != nil {
		return nil, s.lookupError(ctx, "deployment", req.Msg.GetDeploymentId(), err)
	}
	if findTrigger(d.triggers, triggerManual) == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the deployment has no manual trigger"))
	}
	if d.status != deploymentActive {
		return nil, errPaused()
	}
	st, _, err := s.start(ctx, launch{d: d, triggerType: triggerManual, triggerData: req.Msg.GetTriggerData()})
	if err != nil {
		return nil, s.internal(ctx, "start execution", err)
	}
	return connect.NewResponse(&runtimev1.RunDeploymentResponse{Execution: settled(ctx, st, req.Msg.GetWaitSeconds())}), nil
}

// settled is the execution after waiting up to seconds for it to finish:
// complete when it did, as it started otherwise.
func settled(ctx context.Context, st *started, seconds int32) *runtimev1.Execution {
	if seconds > 0 && waitFor(ctx, st, time.Duration(seconds)*time.Second) {
		return st.e.toProto(true)
	}
	return st.first
}

// GetExecution returns one execution of the caller's tenant with its node
// results.
func (s *Service) GetExecution(ctx context.Context, req *connect.Request[runtimev1.GetExecutionRequest]) (*connect.Response[runtimev1.GetExecutionResponse], error) {
	e, err := s.loadExecution(ctx, tenantOf(req.Header()), req.Msg.GetExecutionId())
	if err != nil {
		return nil, err
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

// loadExecution reads an execution with its node results: those of its
// stored result, or, while it runs or when its process died, those stored
// as its nodes finished.
func (s *Service) loadExecution(ctx context.Context, tenant, id string) (*execution, error) {
	e, err := s.repo.getExecution(ctx, tenant, id)
	if err != nil {
		return nil, s.lookupError(ctx, "execution", id, err)
	}
	if len(e.result.GetNodeResults()) == 0 {
		nodes, err := s.repo.nodeResults(ctx, e.id)
		if err != nil {
			return nil, s.internal(ctx, "read node results", err)
		}
		if len(nodes) > 0 {
			if e.result == nil {
				e.result = &enginev1.ExecutionResult{}
			}
			e.result.NodeResults = nodes
		}
	}
	return e, nil
}
