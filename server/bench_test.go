package server

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
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

// benchStack is a do-nothing engine and a gateway in front of it; tweak
// adjusts the gateway's configuration.
func benchStack(b *testing.B, tweak ...func(*Config)) (backendURL, gatewayURL string) {
	b.Helper()
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(nopEngine{}))
	var cfg Config
	for _, f := range tweak {
		f(&cfg)
	}
	return gatewayBefore(b, mux, cfg)
}

// BenchmarkForward measures one ExecuteWorkflow call per iteration, to the
// backend directly (the floor) and through the gateway in each caller
// protocol. Client, gateway and backend share the process, so ns/op is the
// whole round trip; the gateway's own cost is the difference to the floor.
func BenchmarkForward(b *testing.B) {
	backendURL, gatewayURL := benchStack(b)
	benchForward(b, backendURL, gatewayURL)
}

// BenchmarkForwardTraced is BenchmarkForward with every call traced: the
// spans are recorded as when they are exported, then dropped, so that the
// figure is the gateway's cost of tracing without an exporter's.
func BenchmarkForwardTraced(b *testing.B) {
	backendURL, gatewayURL := benchStack(b, func(cfg *Config) {
		cfg.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	})
	benchForward(b, backendURL, gatewayURL)
}

func benchForward(b *testing.B, backendURL, gatewayURL string) {
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
	benchPost(b, h2cClient(b), base+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"bench"}}`, header)
}

// benchPost posts body as JSON to url in parallel, one call per
// iteration, with the given extra headers, and wants 200.
func benchPost(b *testing.B, client *http.Client, url, body string, header http.Header) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
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

// echoEngine answers with the workflow's name as the output, so that the
// response is as large as the request.
type echoEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
}

func (echoEngine) ExecuteWorkflow(_ context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	name := req.Msg.GetWorkflowDefinition().GetName()
	return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{
		Status: "succeeded", Output: structpb.NewStringValue(name),
	}}), nil
}

// streamAgent answers Chat with 100 messages of 1 KiB.
type streamAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
}

var streamMessage = &agentv1.ChatResponse{Type: "message", Content: strings.Repeat("m", 1<<10)}

func (streamAgent) Chat(_ context.Context, _ *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	for range 100 {
		if err := stream.Send(streamMessage); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkForwardLarge forwards 1 MiB each way per call, directly and
// through the gateway, so that a change to buffering shows.
func BenchmarkForwardLarge(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(echoEngine{}))
	backendURL, gatewayURL := gatewayBefore(b, mux, Config{})
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: strings.Repeat("x", 1<<20)}}
	rpc := func(url string, opts ...connect.ClientOption) func(b *testing.B) {
		return func(b *testing.B) {
			client := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(b), url, opts...)
			b.SetBytes(2 << 20)
			b.ReportAllocs()
			for b.Loop() {
				res, err := client.ExecuteWorkflow(context.Background(), connect.NewRequest(req))
				if err != nil || len(res.Msg.GetResult().GetOutput().GetStringValue()) != 1<<20 {
					b.Fatalf("%v", err)
				}
			}
		}
	}
	b.Run("direct/grpc", rpc(backendURL, connect.WithGRPC()))
	b.Run("gateway/grpc", rpc(gatewayURL, connect.WithGRPC()))
	b.Run("gateway/connect", rpc(gatewayURL))
}

// BenchmarkForwardStream relays a server stream of 100 messages of 1 KiB per
// iteration, directly and through the gateway.
func BenchmarkForwardStream(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(streamAgent{}))
	backendURL, gatewayURL := gatewayBefore(b, mux, Config{})
	rpc := func(url string, opts ...connect.ClientOption) func(b *testing.B) {
		return func(b *testing.B) {
			client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(b), url, opts...)
			b.SetBytes(100 << 10)
			b.ReportAllocs()
			for b.Loop() {
				stream, err := client.Chat(context.Background(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "m"}))
				if err != nil {
					b.Fatal(err)
				}
				n := 0
				for stream.Receive() {
					n++
				}
				if err := stream.Err(); err != nil || n != 100 {
					b.Fatalf("%d messages, %v", n, err)
				}
				stream.Close()
			}
		}
	}
	b.Run("direct/grpc", rpc(backendURL, connect.WithGRPC()))
	b.Run("gateway/grpc", rpc(gatewayURL, connect.WithGRPC()))
	b.Run("gateway/connect", rpc(gatewayURL))
}
