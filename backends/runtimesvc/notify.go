package runtimesvc

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// notifyTimeout bounds the delivery of one failure notification.
const notifyTimeout = 30 * time.Second

// triggerOnFailure is the trigger type of an error workflow's executions.
const triggerOnFailure = "on_failure"

// notifyFailure acts on a failed or timed-out execution as the
// deployment's on_failure asks: it runs the error workflow and posts the
// execution to the webhook URL. Executions of error workflows trigger
// nothing, so that two deployments naming each other do not loop.
func (s *Service) notifyFailure(d *deployment, e *execution) {
	if d.onFailure == nil || (e.status != "failed" && e.status != "timed_out") || e.triggerType == triggerOnFailure {
		return
	}
	summary, err := structpb.NewStruct(map[string]any{
		"execution_id": e.id, "deployment_id": e.deploymentID, "deployment_version": float64(e.version),
		"status": e.status, "error": e.errText, "trigger_type": e.triggerType,
		"started_at": e.startedAt.Format(time.RFC3339Nano), "finished_at": e.finishedAt.Format(time.RFC3339Nano),
	})
	if err != nil {
		s.logger.Error("could not build a failure notification", "execution_id", e.id, "error", err)
		return
	}
	if id := d.onFailure.GetDeploymentId(); id != "" {
		s.runErrorWorkflow(e, id, summary)
	}
	if url := d.onFailure.GetWebhookUrl(); url != "" {
		s.postFailure(e, url, summary)
	}
}

// runErrorWorkflow starts the error workflow with the failed execution.
func (s *Service) runErrorWorkflow(e *execution, id string, summary *structpb.Struct) {
	ctx, cancel := context.WithTimeout(s.runCtx, notifyTimeout)
	defer cancel()
	target, err := s.repo.getDeployment(ctx, e.tenant, id)
	switch {
	case err != nil:
		s.logger.Warn("error workflow not run", "execution_id", e.id, "error_workflow", id, "error", err)
		return
	case target.status != deploymentActive:
		s.logger.Warn("error workflow not run: it is paused", "execution_id", e.id, "error_workflow", id)
		return
	}
	if _, _, err := s.start(ctx, launch{d: target, triggerType: triggerOnFailure, triggerData: summary}); err != nil {
		s.logger.Warn("error workflow not run", "execution_id", e.id, "error_workflow", id, "error", err)
	}
}

// postFailure sends the failed execution to url through the engine, as an
// http_request node, so the destination rules that guard workflows' own
// requests (no loopback, private or metadata addresses unless allowed)
// guard it too.
func (s *Service) postFailure(e *execution, target string, summary *structpb.Struct) {
	params, _ := structpb.NewStruct(map[string]any{
		"url": target, "method": "POST", "body": "{{ trigger }}", "fail_on_status": true,
		"headers": map[string]any{"Content-Type": "application/json"},
	})
	def := &enginev1.WorkflowDefinition{
		Name: "on_failure",
		Nodes: []*enginev1.Node{
			{Id: "failed", Type: "trigger"},
			{Id: "notify", Type: "http_request", Parameters: params},
		},
		Connections: []*enginev1.Connection{{Source: "failed", Target: "notify"}},
	}
	ctx, cancel := context.WithTimeout(s.runCtx, notifyTimeout)
	defer cancel()
	res, err := s.engine.ExecuteWorkflow(ctx, connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: def, TriggerData: summary}))
	switch {
	case err != nil:
		s.logger.Warn("failure notification not sent", "execution_id", e.id, "error", err)
	case res.Msg.GetResult().GetStatus() != "succeeded":
		s.logger.Warn("failure notification failed", "execution_id", e.id, "error", res.Msg.GetResult().GetError())
	default:
		s.logger.Info("failure notification sent", "execution_id", e.id, "deployment_id", e.deploymentID)
	}
}
