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
// ends canceled, with the results of the nodes that had finished. An
// execution another replica runs is marked for it to stop (it looks every
// CancelPoll), and the call waits for that.
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
	if st != nil {
		st.cancel(errCanceledByCaller)
	} else if err := s.repo.requestCancel(ctx, tenant, id); err != nil {
		return nil, s.internal(ctx, "request cancellation", err)
	}
	t := time.NewTimer(cancelWait)
	defer t.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	for e.status == statusRunning {
		select {
		case <-st.doneOrNil():
		case <-poll.C:
		case <-t.C:
			return nil, connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("execution %q did not stop in %s", id, cancelWait))
		case <-ctx.Done():
			return nil, s.internal(ctx, "cancel execution", ctx.Err())
		}
		if e, err = s.loadExecution(ctx, tenant, id); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(&runtimev1.CancelExecutionResponse{Execution: e.toProto(true)}), nil
}

// doneOrNil is st.done, or nil (never ready) without st.
func (st *started) doneOrNil() <-chan struct{} {
	if st == nil {
		return nil
	}
	return st.done
}

// cancelLoop stops this process's executions that another replica was
// asked to cancel. It queries only while executions run here.
func (s *Service) cancelLoop(ctx context.Context) {
	every(ctx, s.cfg.CancelPoll, func() { s.pollCancels(ctx) })
}

func (s *Service) pollCancels(ctx context.Context) {
	s.mu.Lock()
	idle := len(s.active) == 0
	s.mu.Unlock()
	if idle {
		return
	}
	ids, err := s.repo.cancelRequested(ctx, s.instance)
	if err != nil {
		if ctx.Err() == nil {
			s.logger.Error("could not read cancellation requests", "error", err)
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if st := s.active[id]; st != nil {
			st.cancel(errCanceledByCaller)
		}
	}
}

func (r *repo) requestCancel(ctx context.Context, tenant, id string) error {
	if _, err := r.db.Exec(ctx, `UPDATE executions SET cancel_requested = 1 WHERE id = ? AND tenant = ? AND status = ?`, id, tenant, statusRunning); err != nil {
		return fmt.Errorf("request cancellation: %w", err)
	}
	return nil
}

// cancelRequested lists the running executions of owner whose cancellation
// was asked for.
func (r *repo) cancelRequested(ctx context.Context, owner string) ([]string, error) {
	rows, err := r.db.Query(ctx, `SELECT id FROM executions WHERE owner = ? AND status = ? AND cancel_requested = 1`, owner, statusRunning)
	if err != nil {
		return nil, fmt.Errorf("list cancellation requests: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("scan cancellation request: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
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
