package runtimesvc

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// Deployment statuses.
const (
	deploymentActive = "active"
	deploymentPaused = "paused"
)

const (
	maxNameLen        = 200
	maxDescriptionLen = 2000
)

// deployment is a stored deployment, secrets included.
type deployment struct {
	id          string
	tenant      string
	name        string
	description string
	status      string
	definition  *enginev1.WorkflowDefinition
	triggers    []*runtimev1.Trigger
	createdAt   time.Time
	updatedAt   time.Time
	hookNS      string // the tenant's webhook namespace, when it has a webhook trigger
	version     int32
	runTimeout  time.Duration // 0: the engine's default
	onFailure   *runtimev1.OnFailure
}

// CreateDeployment validates the workflow (through the engine) and the
// triggers, and stores the deployment.
func (s *Service) CreateDeployment(ctx context.Context, req *connect.Request[runtimev1.CreateDeploymentRequest]) (*connect.Response[runtimev1.CreateDeploymentResponse], error) {
	msg := req.Msg
	d := &deployment{
		id:          uuid.NewString(),
		tenant:      tenantOf(req.Header()),
		name:        strings.TrimSpace(msg.GetName()),
		description: msg.GetDescription(),
		status:      deploymentActive,
		definition:  msg.GetWorkflowDefinition(),
		triggers:    msg.GetTriggers(),
		version:     1,
	}
	if err := s.setRunOptions(d, msg.GetRunTimeout(), msg.GetOnFailure()); err != nil {
		return nil, err
	}
	if err := s.checkDeployment(ctx, d); err != nil {
		return nil, err
	}
	d.createdAt = time.Now().UTC().Truncate(time.Microsecond)
	d.updatedAt = d.createdAt
	if err := s.repo.insertDeployment(ctx, d); err != nil {
		return nil, s.deploymentWriteError(ctx, d, err)
	}
	s.scheduleChanged()
	s.logger.InfoContext(ctx, "deployment created", "deployment_id", d.id, "tenant", d.tenant)
	return connect.NewResponse(&runtimev1.CreateDeploymentResponse{Deployment: s.toProto(d)}), nil
}

// UpdateDeployment replaces the workflow, triggers and details. A webhook
// trigger sent without a secret keeps the secret it had: secrets are never
// returned, so a client that read and re-sent the deployment must not lose it.
func (s *Service) UpdateDeployment(ctx context.Context, req *connect.Request[runtimev1.UpdateDeploymentRequest]) (*connect.Response[runtimev1.UpdateDeploymentResponse], error) {
	msg := req.Msg
	tenant := tenantOf(req.Header())
	old, err := s.repo.getDeployment(ctx, tenant, msg.GetDeploymentId())
	if err != nil {
		return nil, s.lookupError(ctx, "deployment", msg.GetDeploymentId(), err)
	}
	d := &deployment{
		id: old.id, tenant: tenant, name: strings.TrimSpace(msg.GetName()), description: msg.GetDescription(),
		status: old.status, definition: msg.GetWorkflowDefinition(), triggers: msg.GetTriggers(), createdAt: old.createdAt,
	}
	switch msg.GetStatus() {
	case "":
	case deploymentActive, deploymentPaused:
		d.status = msg.GetStatus()
	default:
		return nil, invalid("status", "must be active or paused")
	}
	if err := s.setRunOptions(d, msg.GetRunTimeout(), msg.GetOnFailure()); err != nil {
		return nil, err
	}
	if err := s.checkDeployment(ctx, d); err != nil {
		return nil, err
	}
	if nw, od := findTrigger(d.triggers, triggerWebhook), findTrigger(old.triggers, triggerWebhook); nw != nil && od != nil && nw.GetSecret() == "" {
		nw.Secret = od.GetSecret()
	}
	d.updatedAt = time.Now().UTC().Truncate(time.Microsecond)
	if err := s.repo.updateDeployment(ctx, d, !proto.Equal(old.definition, d.definition)); err != nil {
		return nil, s.deploymentWriteError(ctx, d, err)
	}
	s.scheduleChanged()
	return connect.NewResponse(&runtimev1.UpdateDeploymentResponse{Deployment: s.toProto(d)}), nil
}

// GetDeployment returns one deployment of the caller's tenant.
func (s *Service) GetDeployment(ctx context.Context, req *connect.Request[runtimev1.GetDeploymentRequest]) (*connect.Response[runtimev1.GetDeploymentResponse], error) {
	d, err := s.repo.getDeployment(ctx, tenantOf(req.Header()), req.Msg.GetDeploymentId())
	if err != nil {
		return nil, s.lookupError(ctx, "deployment", req.Msg.GetDeploymentId(), err)
	}
	return connect.NewResponse(&runtimev1.GetDeploymentResponse{Deployment: s.toProto(d)}), nil
}

// DeleteDeployment removes a deployment and frees its webhook path; its
// executions stay in the history.
func (s *Service) DeleteDeployment(ctx context.Context, req *connect.Request[runtimev1.DeleteDeploymentRequest]) (*connect.Response[runtimev1.DeleteDeploymentResponse], error) {
	id := req.Msg.GetDeploymentId()
	if err := s.repo.deleteDeployment(ctx, tenantOf(req.Header()), id); err != nil {
		return nil, s.lookupError(ctx, "deployment", id, err)
	}
	s.scheduleChanged()
	return connect.NewResponse(&runtimev1.DeleteDeploymentResponse{DeploymentId: id}), nil
}

// ListDeployments pages through the tenant's deployments, newest first.
func (s *Service) ListDeployments(ctx context.Context, req *connect.Request[runtimev1.ListDeploymentsRequest]) (*connect.Response[runtimev1.ListDeploymentsResponse], error) {
	msg := req.Msg
	if st := msg.GetStatus(); st != "" && st != deploymentActive && st != deploymentPaused {
		return nil, invalid("status", "must be active or paused")
	}
	pg, err := parsePaging(msg.GetPage(), msg.GetPageSize(), msg.GetPageToken(), "deployments:"+msg.GetStatus())
	if err != nil {
		return nil, err
	}
	page, err := s.repo.listDeployments(ctx, tenantOf(req.Header()), msg.GetStatus(), pg)
	if err != nil {
		return nil, s.internal(ctx, "list deployments", err)
	}
	out := &runtimev1.ListDeploymentsResponse{
		TotalCount: clampInt32(page.total), Page: pg.page, PageSize: pg.size, NextPageToken: page.next,
	}
	for _, d := range page.items {
		out.Deployments = append(out.Deployments, s.toProto(d))
	}
	return connect.NewResponse(out), nil
}

// checkDeployment validates name, description and triggers here and the
// workflow through the engine, so that what is deployed will run.
func (s *Service) checkDeployment(ctx context.Context, d *deployment) error {
	switch {
	case d.name == "":
		return invalid("name", "is required")
	case utf8.RuneCountInString(d.name) > maxNameLen:
		return invalid("name", "must be at most %d characters", maxNameLen)
	case utf8.RuneCountInString(d.description) > maxDescriptionLen:
		return invalid("description", "must be at most %d characters", maxDescriptionLen)
	case d.definition == nil:
		return invalid("workflow_definition", "is required")
	}
	if err := s.checkTriggers(d.triggers); err != nil {
		return err
	}
	if err := s.checkRunTimeout(d); err != nil {
		return err
	}
	if err := s.checkErrorWorkflow(ctx, d); err != nil {
		return err
	}
	_, err := s.engine.ExecuteWorkflow(ctx, connect.NewRequest(&enginev1.ExecuteWorkflowRequest{
		WorkflowDefinition: d.definition,
		ValidateOnly:       true,
	}))
	if err == nil {
		return nil
	}
	if connect.CodeOf(err) == connect.CodeInvalidArgument {
		return err // carries the engine's field violation, whose path matches ours
	}
	return s.engineError(ctx, err)
}

// engineError maps a failed engine call for the caller.
func (s *Service) engineError(ctx context.Context, err error) error {
	switch connect.CodeOf(err) {
	case connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return connect.NewError(connect.CodeOf(err), errors.New("the workflow engine did not answer in time"))
	default:
		s.logger.ErrorContext(ctx, "engine call failed", "error", err)
		return connect.NewError(connect.CodeUnavailable, errors.New("the workflow engine is unavailable"))
	}
}

func (s *Service) deploymentWriteError(ctx context.Context, d *deployment, err error) error {
	if errors.Is(err, errPathTaken) {
		wh := findTrigger(d.triggers, triggerWebhook)
		return connect.NewError(connect.CodeAlreadyExists, errors.New("webhook path \""+wh.GetPath()+"\" is used by another deployment"))
	}
	if errors.Is(err, errNotFound) {
		return notFound("deployment", d.id)
	}
	return s.internal(ctx, "write deployment", err)
}

func (s *Service) lookupError(ctx context.Context, what, id string, err error) error {
	if errors.Is(err, errNotFound) {
		return notFound(what, id)
	}
	return s.internal(ctx, "read "+what, err)
}

// toProto renders a deployment for a response, without secrets.
func (s *Service) toProto(d *deployment) *runtimev1.Deployment {
	out := &runtimev1.Deployment{
		DeploymentId:       d.id,
		Name:               d.name,
		Description:        d.description,
		Status:             d.status,
		WorkflowDefinition: proto.CloneOf(d.definition),
		Triggers:           publicTriggers(d.triggers),
		CreatedAt:          timestamppb.New(d.createdAt),
		UpdatedAt:          timestamppb.New(d.updatedAt),
		Version:            d.version,
		OnFailure:          proto.CloneOf(d.onFailure),
	}
	if d.runTimeout > 0 {
		out.RunTimeout = durationpb.New(d.runTimeout)
	}
	if wh := findTrigger(d.triggers, triggerWebhook); wh != nil && d.hookNS != "" {
		out.WebhookUrl = s.public + "/api/v1/webhooks/" + d.hookNS + "/" + wh.GetPath()
	}
	return out
}

func clampInt32(n int64) int32 {
	if n > 1<<31-1 {
		return 1<<31 - 1
	}
	return int32(n)
}
