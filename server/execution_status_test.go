package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// TestRunningExecutionStatusStaysInternal: the header that asks the REST
// layer for 202 Accepted is the gateway's own; a gRPC caller served by
// grpc-go, which the REST layer does not see, must not get it.
func TestRunningExecutionStatusStaysInternal(t *testing.T) {
	t.Parallel()
	url := startReferenceGateway(t)
	tok := hsToken(t, jwt.MapClaims{"sub": "ann", "tenant": "tenant-a"})
	res := doREST(t, http.MethodPost, url+"/api/v1/workflow/deployments", strings.NewReader(tenantDeployment), bearer(tok))
	var dep struct {
		ID string `json:"deployment_id"`
	}
	if res.status != http.StatusOK || json.Unmarshal(res.body, &dep) != nil || dep.ID == "" {
		t.Fatalf("create: %d %s", res.status, res.body)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	var header metadata.MD
	out := new(runtimev1.RunDeploymentResponse)
	err := grpcGoClient(t, url).Invoke(ctx, runtimev1connect.WorkflowRuntimeServiceRunDeploymentProcedure,
		&runtimev1.RunDeploymentRequest{DeploymentId: dep.ID}, out, grpc.Header(&header))
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
