package e2e

import (
	"testing"
	"time"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// TestStreamWorkflowEveryRPCProtocol streams a run through the gateway in
// Connect, gRPC and gRPC-Web: node events, the respond event, the result.
// (It has no REST route: the transcoder cannot stream plain messages.)
func TestStreamWorkflowEveryRPCProtocol(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	clients := map[string]enginev1connect.WorkflowEngineServiceClient{
		"connect": enginev1connect.NewWorkflowEngineServiceClient(http1(t), s.url),
		"grpc":    enginev1connect.NewWorkflowEngineServiceClient(h2c(t), s.url, connect.WithGRPC()),
		"grpcweb": enginev1connect.NewWorkflowEngineServiceClient(http1(t), s.url, connect.WithGRPCWeb()),
	}
	for name, client := range clients {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			stream, err := client.StreamWorkflow(withTimeout(t, time.Minute), connect.NewRequest(&enginev1.StreamWorkflowRequest{WorkflowDefinition: greeter(t)}))
			if err != nil {
				t.Fatal(err)
			}
			defer stream.Close()
			var nodes, responds, results int
			for stream.Receive() {
				switch ev := stream.Msg().GetEvent().(type) {
				case *enginev1.StreamWorkflowResponse_NodeFinished:
					nodes++
				case *enginev1.StreamWorkflowResponse_Respond:
					responds++
					if ev.Respond.GetStatusCode() != 201 {
						t.Errorf("respond event %v", ev.Respond)
					}
				case *enginev1.StreamWorkflowResponse_Result:
					results++
					if ev.Result.GetStatus() != "succeeded" {
						t.Errorf("result %v", ev.Result)
					}
				}
			}
			if err := stream.Err(); err != nil || nodes != 3 || responds != 1 || results != 1 {
				t.Errorf("%d node events, %d respond events, %d results, %v", nodes, responds, results, err)
			}
		})
	}
}
