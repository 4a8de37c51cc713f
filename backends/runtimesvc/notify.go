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

// notifyFailure posts a failed or timed-out execution to the deployment's
// on_failure webhook. The engine sends it, as an http_request node, so the
// destination rules that guard workflows' own requests (no loopback,
// private or metadata addresses unless allowed) guard it too.
func (s *Service) notifyFailure(d *deployment, e *execution) {
	target := d.onFailure.GetWebhookUrl()
	if target == "" || (e.status != "failed" && e.status != "timed_out") {
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
