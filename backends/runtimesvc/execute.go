package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// launch is one request to run a deployment.
type launch struct {
	d           *deployment
	triggerType string
	triggerData *structpb.Struct
	idemKey     string
	requestHash string // identifies the request idemKey came with
	scheduledAt time.Time
	retryOf     string // the execution this one retries
}

// started is a launched execution; done closes when it has finished and
// its final state is stored (e is then complete). responded closes as soon
// as a respond node has answered (resp is then set) or, without one, when
// the run ends.
type started struct {
	e         *execution
	first     *runtimev1.Execution // e as it was started, for answers given while it runs
	done      chan struct{}
	responded chan struct{}
	respOnce  sync.Once
	resp      *enginev1.WebhookResponse
	cancel    context.CancelCauseFunc
}

// respond hands the respond node's answer (nil: there was none) to whoever
// waits for it; the first call counts.
func (st *started) respond(wr *enginev1.WebhookResponse) {
	st.respOnce.Do(func() {
		st.resp = wr
		close(st.responded)
	})
}

// errCanceledByCaller is the cause of a run cancelled through CancelExecution.
var errCanceledByCaller = errors.New("canceled through the API")

// start records a running execution and runs it in the background, so
// that it finishes and is recorded even when the caller stops waiting.
// When the idempotency key or schedule tick is taken, it returns the
// earlier execution with dup set (and runs nothing), or an error when the
// key came with a different request. A key whose execution was interrupted
// is passed on to a new attempt, whose retry_of names the interrupted one.
func (s *Service) start(ctx context.Context, l launch) (st *started, dup *execution, err error) {
	if l.triggerData == nil {
		l.triggerData = &structpb.Struct{}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, nil, connect.NewError(connect.CodeUnavailable, errors.New("the runtime is shutting down"))
	}
	s.runs.Add(1)
	s.mu.Unlock()
	e, err := s.insert(ctx, l)
	if err != nil && errors.Is(err, errDuplicate) && l.idemKey != "" {
		var prev *execution
		if prev, err = s.earlier(ctx, l); err == nil && prev.status == statusInterrupted {
			if err = s.repo.releaseKey(ctx, prev.id); err == nil {
				l.retryOf = prev.id
				// A concurrent retry may take the key first: then its
				// execution is the one to answer with.
				if e, err = s.insert(ctx, l); errors.Is(err, errDuplicate) {
					prev, err = s.earlier(ctx, l)
				}
			}
		}
		if e == nil {
			s.runs.Done()
			return nil, prev, err
		}
	}
	if err != nil {
		s.runs.Done()
		return nil, nil, err
	}
	st = &started{e: e, first: e.toProto(false), done: make(chan struct{}), responded: make(chan struct{})}
	runCtx, cancel := context.WithCancelCause(s.runCtx)
	st.cancel = cancel
	s.mu.Lock()
	s.active[e.id] = st
	s.mu.Unlock()
	go func() {
		defer s.runs.Done()
		s.execute(runCtx, l.d, st)
		cancel(nil)
		s.mu.Lock()
		delete(s.active, e.id)
		s.mu.Unlock()
		close(st.done)
		s.notifyFailure(l.d, st.e)
	}()
	return st, nil, nil
}

// insert records a new running execution of l.
func (s *Service) insert(ctx context.Context, l launch) (*execution, error) {
	e := &execution{
		id:           uuid.Must(uuid.NewV7()).String(),
		tenant:       l.d.tenant,
		deploymentID: l.d.id,
		status:       statusRunning,
		triggerType:  l.triggerType,
		triggerData:  l.triggerData,
		startedAt:    time.Now().UTC().Truncate(time.Microsecond),
		version:      l.d.version,
		retryOf:      l.retryOf,
	}
	err := s.repo.insertExecution(ctx, newExecution{e: e, owner: s.instance, idemKey: l.idemKey, requestHash: l.requestHash, scheduledAt: l.scheduledAt})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// earlier returns the execution an idempotency key already started, and
// refuses the key when it came with a different request. Executions stored
// before request hashes were kept match any request.
func (s *Service) earlier(ctx context.Context, l launch) (*execution, error) {
	prev, hash, err := s.repo.executionByKey(ctx, l.d.id, l.idemKey)
	if err != nil {
		return nil, err
	}
	if hash != "" && hash != l.requestHash {
		return nil, keyReused()
	}
	return prev, nil
}

// execute runs the workflow through the engine's stream, storing each
// node's result as it finishes, and stores the outcome.
func (s *Service) execute(ctx context.Context, d *deployment, st *started) {
	e := st.e
	defer st.respond(nil)
	req := &enginev1.StreamWorkflowRequest{WorkflowDefinition: d.definition, TriggerData: e.triggerData}
	if timeout := s.runTimeout(d); timeout > 0 {
		req.Timeout = durationpb.New(timeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+30*time.Second)
		defer cancel()
	}
	p := &progress{s: s, st: st}
	res, err := p.run(ctx, req)
	nodes, progressStored := p.finished()
	switch {
	case err == nil:
		e.result, e.status, e.output, e.errText = res, res.GetStatus(), res.GetOutput(), res.GetError()
		if !finalStatuses[e.status] {
			e.status, e.errText = "failed", fmt.Sprintf("the engine reported an unknown status %q", res.GetStatus())
		}
	case errors.Is(context.Cause(ctx), errCanceledByCaller):
		e.status, e.errText = "canceled", "the execution was canceled through the API"
	case s.runCtx.Err() != nil:
		e.status, e.errText = statusInterrupted, "the runtime shut down while the execution was running"
	default:
		e.status, e.errText = "failed", engineFailure(err)
		s.logger.LogAttrs(ctx, slog.LevelWarn, "engine call failed", slog.String("execution_id", e.id), slog.Any("error", err))
	}
	if e.result == nil {
		// What had finished before the run was cut.
		e.result = &enginev1.ExecutionResult{Status: e.status, NodeResults: nodes, Error: e.errText}
	}
	e.finishedAt = time.Now().UTC().Truncate(time.Microsecond)
	// Store the outcome even when shutting down: the run is over either way.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.repo.finishExecution(storeCtx, e); err != nil {
		if errors.Is(err, errNotFound) {
			s.logger.Warn("execution was no longer running when it finished", "execution_id", e.id)
			return
		}
		s.logger.Error("could not store execution result", "execution_id", e.id, "error", err)
		return
	}
	if !progressStored {
		return
	}
	if err := s.repo.dropNodeResults(storeCtx, e.id); err != nil {
		s.logger.Warn("could not remove an execution's progress rows", "execution_id", e.id, "error", err)
	}
}

// engineFailure says why the engine could not run a workflow without
// passing on transport details.
func engineFailure(err error) string {
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument:
		var cerr *connect.Error
		if errors.As(err, &cerr) {
			return "the workflow is not valid: " + cerr.Message()
		}
		return "the workflow is not valid"
	case connect.CodeDeadlineExceeded:
		return "the workflow engine did not answer in time"
	default:
		return "the workflow engine is unavailable"
	}
}

func isDuplicate(err error) bool { return errors.Is(err, errDuplicate) }
