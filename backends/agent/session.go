package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

const (
	actionCreate = "create"
	actionEdit   = "edit"
	maxIDLen     = 128
)

// invalid is an InvalidArgument error naming the offending field.
func invalid(field, reason string) *connect.Error {
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, reason))
	if d, e := connect.NewErrorDetail(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}},
	}); e == nil {
		err.AddDetail(d)
	}
	return err
}

func checkID(field, v string) *connect.Error {
	switch {
	case strings.TrimSpace(v) == "":
		return invalid(field, "is required")
	case len(v) > maxIDLen:
		return invalid(field, fmt.Sprintf("must be at most %d characters", maxIDLen))
	}
	return nil
}

// CreateSession starts an empty session ("create") or one holding an
// existing deployment's workflow ("edit").
func (s *Service) CreateSession(ctx context.Context, req *connect.Request[agentv1.CreateSessionRequest]) (*connect.Response[agentv1.CreateSessionResponse], error) {
	id := identityOf(req.Header())
	msg := req.Msg
	sess := &session{
		key:       sessionKey{tenant: id.tenant, id: uuid.NewString()},
		action:    msg.GetAction(),
		createdAt: time.Now().UTC().Truncate(time.Microsecond),
	}
	waiting := map[string]any{"reason": "Describe the workflow you want in the chat: what starts it, what it checks, what it does."}
	switch msg.GetAction() {
	case actionCreate:
		if msg.GetWorkflowId() != "" {
			return nil, invalid("workflow_id", "is only allowed with action edit")
		}
	case actionEdit:
		if err := checkID("workflow_id", msg.GetWorkflowId()); err != nil {
			return nil, err
		}
		dep, err := s.loadDeployment(ctx, id, msg.GetWorkflowId())
		if err != nil {
			return nil, err
		}
		def, err := protojson.Marshal(dep.GetWorkflowDefinition())
		if err != nil {
			return nil, internalError(s.logger, "encode workflow", err)
		}
		sess.workflowID, sess.definition = dep.GetDeploymentId(), string(def)
		waiting = map[string]any{
			"reason":              fmt.Sprintf("Describe the changes you want to %q in the chat.", dep.GetName()),
			"workflow_definition": jsonValue(dep.GetWorkflowDefinition()),
		}
	default:
		return nil, invalid("action", "must be create or edit")
	}
	if err := s.store.createSession(ctx, sess); err != nil {
		return nil, internalError(s.logger, "create session", err)
	}
	if _, err := s.appendEvent(ctx, sess.key, eventWaiting, "", waiting); err != nil {
		return nil, internalError(s.logger, "create session", err)
	}
	return connect.NewResponse(&agentv1.CreateSessionResponse{
		SessionId: sess.key.id,
		CreatedAt: timestamppb.New(sess.createdAt),
	}), nil
}

// loadDeployment reads a deployment from the runtime as the caller.
func (s *Service) loadDeployment(ctx context.Context, id identity, deploymentID string) (*runtimev1.Deployment, error) {
	req := connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: deploymentID})
	id.apply(req.Header())
	resp, err := s.runtime.GetDeployment(ctx, req)
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("workflow %q not found", deploymentID))
	case connect.CodeOf(err) == connect.CodeInvalidArgument:
		return nil, invalid("workflow_id", "is not a valid workflow id")
	case connect.CodeOf(err) == connect.CodePermissionDenied:
		// The runtime judged the caller, not the agent: editing a workflow
		// needs the right to read it.
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("editing a workflow needs the workflows:read scope"))
	case err != nil:
		var ce *connect.Error
		if errors.As(err, &ce) && ce.Code() == connect.CodeUnavailable {
			return nil, connect.NewError(connect.CodeUnavailable, errors.New("the runtime is unavailable"))
		}
		return nil, internalError(s.logger, "load workflow", err)
	}
	if resp.Msg.GetDeployment().GetWorkflowDefinition() == nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("workflow %q not found", deploymentID))
	}
	return resp.Msg.GetDeployment(), nil
}

// openSession validates a session id and loads the caller's session.
func (s *Service) openSession(ctx context.Context, id identity, sessionID string) (*session, error) {
	if err := checkID("session_id", sessionID); err != nil {
		return nil, err
	}
	sess, err := s.store.session(ctx, sessionKey{tenant: id.tenant, id: sessionID})
	if errors.Is(err, errNoSession) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("session %q not found", sessionID))
	}
	if err != nil {
		return nil, internalError(s.logger, "load session", err)
	}
	return sess, nil
}

// conversation is the session's stored conversation and workflow.
func (s *Service) conversation(ctx context.Context, sess *session) (Conversation, error) {
	turns, err := s.store.turns(ctx, sess.key)
	if err != nil {
		return Conversation{}, err
	}
	conv := Conversation{Turns: make([]Turn, len(turns))}
	for i, t := range turns {
		conv.Turns[i] = Turn{Role: t.role, Content: t.content}
	}
	if sess.definition != "" {
		def := &enginev1.WorkflowDefinition{}
		if err := protojson.Unmarshal([]byte(sess.definition), def); err != nil {
			return Conversation{}, fmt.Errorf("decode session workflow: %w", err)
		}
		conv.Current = def
	}
	return conv, nil
}
