package server

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/flowgate/flowgate/backends"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// TestRunningExecutionStatusStaysInternal: the header that asks the REST
// layer for 202 Accepted is the gateway's own; a gRPC caller served by
// grpc-go, which the REST layer does not see, must not get it.
func TestRunningExecutionStatusStaysInternal(t *testing.T) {
	t.Parallel()
	g := startScopedGateway(t, backends.Config{})
	id := g.deploy(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", keyDeployer)
	var header metadata.MD
	out := new(runtimev1.RunDeploymentResponse)
	err := grpcGoClient(t, g.url).Invoke(ctx, runtimev1connect.WorkflowRuntimeServiceRunDeploymentProcedure,
		&runtimev1.RunDeploymentRequest{DeploymentId: id}, out, grpc.Header(&header))
	if err != nil {
		t.Fatal(err)
	}
	if out.GetExecution().GetStatus() != "running" || out.GetExecution().GetExecutionId() == "" {
		t.Fatalf("execution %v", out.GetExecution())
	}
	if got := header.Get(statusHeader); len(got) != 0 {
		t.Errorf("the internal status header reached a gRPC caller: %v", got)
	}
}
