package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// nopEngine answers at once: the floor a forwarded call is measured from.
type nopEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
}

var nopResult = &enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{Status: "succeeded"}}

func (nopEngine) ExecuteWorkflow(context.Context, *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	return connect.NewResponse(nopResult), nil
}

// benchStack is a do-nothing engine and a gateway in front of it.
func benchStack(b *testing.B) (backendURL, gatewayURL string) {
	b.Helper()
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(nopEngine{}))
	backend := startH2C(b, mux)
	up := Upstream{Address: backend.Listener.Addr().String()}
	// The agent and runtime are never called; any address will do.
	_, gw := startGateway(b, Config{Engine: up, Agent: up, Runtime: up})
	return backend.URL, gw
}

// BenchmarkForward measures one ExecuteWorkflow call per iteration, to the
// backend directly (the floor) and through the gateway in each caller
// protocol. Client, gateway and backend share the process, so ns/op is the
// whole round trip; the gateway's own cost is the difference to the floor.
func BenchmarkForward(b *testing.B) {
	backendURL, gatewayURL := benchStack(b)
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "bench"}}
	rpc := func(url string, opts ...connect.ClientOption) func(b *testing.B) {
		return func(b *testing.B) {
			client := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(b), url, opts...)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.ExecuteWorkflow(context.Background(), connect.NewRequest(req)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
	}
	b.Run("direct/grpc", rpc(backendURL, connect.WithGRPC()))
	b.Run("gateway/grpc", rpc(gatewayURL, connect.WithGRPC()))
	b.Run("gateway/connect", rpc(gatewayURL))
	b.Run("gateway/grpcweb", rpc(gatewayURL, connect.WithGRPCWeb()))
	b.Run("gateway/rest", func(b *testing.B) { benchREST(b, gatewayURL, nil) })
}

// benchREST posts ExecuteWorkflow over REST in parallel, one call per
// iteration, with the given extra headers.
func benchREST(b *testing.B, base string, header http.Header) {
	client := h2cClient(b)
	body := `{"workflow_definition":{"name":"bench"}}`
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, err := http.NewRequest(http.MethodPost, base+"/api/v1/workflow/execute", strings.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header = header.Clone()
			if req.Header == nil {
				req.Header = http.Header{}
			}
			req.Header.Set("Content-Type", "application/json")
			res, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				b.Errorf("status %d", res.StatusCode)
				return
			}
		}
	})
}
