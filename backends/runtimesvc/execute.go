package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// launch is one request to run a deployment.
type launch struct {
	d           *deployment
	triggerType string
	triggerData *structpb.Struct
	idemKey     string
	requestHash string // identifies the request idemKey came with
	scheduledAt time.Time
}

// started is a launched execution; done closes when it has finished and
// its final state is stored (e is then complete).
type started struct {
	e    *execution
	done chan struct{}
}

// start records a running execution and runs it in the background, so
// that it finishes and is recorded even when the caller stops waiting.
// When the idempotency key or schedule tick is taken, it returns the
// earlier execution with dup set (and runs nothing), or an error when the
// key came with a different request.
func (s *Service) start(ctx context.Context, l launch) (st *started, dup *execution, err error) {
	if l.triggerData == nil {
		l.triggerData = &structpb.Struct{}
	}
	e := &execution{
		id:           uuid.Must(uuid.NewV7()).String(),
		tenant:       l.d.tenant,
		deploymentID: l.d.id,
		status:       statusRunning,
		triggerType:  l.triggerType,
		triggerData:  l.triggerData,
		startedAt:    time.Now().UTC().Truncate(time.Microsecond),
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, nil, connect.NewError(connect.CodeUnavailable, errors.New("the runtime is shutting down"))
	}
	s.runs.Add(1)
	s.mu.Unlock()
	err = s.repo.insertExecution(ctx, newExecution{e: e, owner: s.instance, idemKey: l.idemKey, requestHash: l.requestHash, scheduledAt: l.scheduledAt})
	if err != nil {
		s.runs.Done()
		if errors.Is(err, errDuplicate) && l.idemKey != "" {
			prev, err := s.earlier(ctx, l)
			return nil, prev, err
		}
		return nil, nil, err
	}
	st = &started{e: e, done: make(chan struct{})}
	go func() {
		defer s.runs.Done()
		defer close(st.done)
		s.execute(l.d, e)
	}()
	return st, nil, nil
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

// execute runs the workflow through the engine and stores the outcome.
func (s *Service) execute(d *deployment, e *execution) {
	ctx := s.runCtx
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: d.definition, TriggerData: e.triggerData}
	if s.cfg.RunTimeout > 0 {
		req.Timeout = durationpb.New(s.cfg.RunTimeout)
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RunTimeout+30*time.Second)
		defer cancel()
	}
	res, err := s.engine.ExecuteWorkflow(ctx, connect.NewRequest(req))
	switch {
	case err == nil:
		r := res.Msg.GetResult()
		e.result, e.status, e.output, e.errText = r, r.GetStatus(), r.GetOutput(), r.GetError()
		if !finalStatuses[e.status] {
			e.status, e.errText = "failed", fmt.Sprintf("the engine reported an unknown status %q", r.GetStatus())
		}
	case s.runCtx.Err() != nil:
		e.status, e.errText = statusInterrupted, "the runtime shut down while the execution was running"
	default:
		e.status, e.errText = "failed", engineFailure(err)
		s.logger.LogAttrs(ctx, slog.LevelWarn, "engine call failed", slog.String("execution_id", e.id), slog.Any("error", err))
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
