package server

import (
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// grpcGoClient is a grpc-go client of the gateway, as grpcurl and most gRPC
// callers are.
func grpcGoClient(tb testing.TB, url string) *grpc.ClientConn {
	tb.Helper()
	conn, err := grpc.NewClient(strings.TrimPrefix(url, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

// A gRPC caller's connection is served by grpc-go, with everything the
// net/http path gives: the backend's answer and headers, errors with their
// details and metadata, streams, request ids, health and reflection.
func TestGRPCCallersServedByGRPCGo(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	gw, url := startGateway(t, b.cfg)
	conn := grpcGoClient(t, url)
	ctx := t.Context()

	var header, trailer metadata.MD
	res := new(enginev1.ExecuteWorkflowResponse)
	err := conn.Invoke(ctx, "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow",
		&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "hello"}}, res,
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil {
		t.Fatal(err)
	}
	if res.GetResult().GetOutput().GetStringValue() != "hello" {
		t.Errorf("response %v", res)
	}
	if got := header.Get("x-backend-header"); !slices.Equal(got, []string{"h"}) {
		t.Errorf("backend header %v in %v", got, header)
	}
	if len(header.Get("x-request-id")) != 1 || len(header.Get("grpc-internal-thing")) != 0 {
		t.Errorf("headers %v", header)
	}
	if got := trailer.Get("x-backend-trailer"); !slices.Equal(got, []string{"t"}) {
		t.Errorf("trailers %v", trailer)
	}

	trailer = nil
	err = conn.Invoke(ctx, "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow",
		&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "invalid"}}, res, grpc.Trailer(&trailer))
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || st.Message() != "workflow_definition.nodes[0].type: unknown node type" {
		t.Fatalf("error %v", err)
	}
	if len(st.Details()) != 1 {
		t.Fatalf("details %v", st.Details())
	}
	if br, ok := st.Details()[0].(*errdetails.BadRequest); !ok || br.GetFieldViolations()[0].GetField() != "workflow_definition.nodes[0].type" {
		t.Errorf("detail %v", st.Details()[0])
	}
	if got := trailer.Get("x-backend-note"); !slices.Equal(got, []string{"validated"}) {
		t.Errorf("error metadata %v", trailer)
	}

	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/workflow.agent.v1.WorkflowAgentService/Chat")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&agentv1.ChatRequest{SessionId: "s", UserMessage: "fail"}); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	n := 0
	for {
		msg := new(agentv1.ChatResponse)
		if err = stream.RecvMsg(msg); err != nil {
			break
		}
		n++
	}
	if st := status.Convert(err); n != 2 || st.Code() != codes.Internal || st.Message() != "model went away" {
		t.Errorf("stream: %d messages, then %v", n, err)
	}

	hres, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "workflow.engine.v1.WorkflowEngineService"})
	// The test backends have no health service: the gateway says so.
	if err != nil || hres.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health: %v %v", hres, err)
	}

	refl, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := refl.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	rres, err := refl.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range rres.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	slices.Sort(names)
	if want := []string{"grpc.health.v1.Health", "workflow.agent.v1.WorkflowAgentService", "workflow.engine.v1.WorkflowEngineService", "workflow.runtime.v1.WorkflowRuntimeService"}; !slices.Equal(names, want) {
		t.Errorf("reflection lists %v", names)
	}
	_ = refl.CloseSend()

	err = conn.Invoke(ctx, "/workflow.engine.v1.WorkflowEngineService/Nope", res, res)
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("unknown method: %v", err)
	}
	if gw.fast.served.Load() < 6 {
		t.Errorf("grpc-go served %d calls", gw.fast.served.Load())
	}
}

// A connection that starts with another protocol stays with net/http for
// every call, gRPC ones included.
func TestMixedConnectionStaysWithNetHTTP(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	gw, url := startGateway(t, b.cfg)
	client := h2cClient(t) // one connection for both protocols
	for _, opts := range [][]connect.ClientOption{nil, {connect.WithGRPC()}, nil} {
		res, err := enginev1Client(client, url, opts...).ExecuteWorkflow(t.Context(), execute("mixed"))
		if err != nil || res.Msg.GetResult().GetOutput().GetStringValue() != "mixed" {
			t.Fatalf("%v %v", res, err)
		}
	}
	if n := gw.fast.served.Load(); n != 0 {
		t.Errorf("grpc-go served %d calls of a Connect connection", n)
	}
}

// An unreachable upstream is worded the same on the grpc-go path.
func TestGRPCGoPathErrors(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	down := b.cfg
	down.Engine = Upstream{Address: deadAddress(t)}
	_, url := startGateway(t, down)
	conn := grpcGoClient(t, url)
	var header metadata.MD
	err := conn.Invoke(t.Context(), "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", &enginev1.ExecuteWorkflowRequest{}, new(enginev1.ExecuteWorkflowResponse), grpc.Header(&header))
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || st.Message() != "workflow engine is unavailable" || len(st.Details()) != 0 {
		t.Errorf("got %v, details %v", err, st.Details())
	}
	// A caller can quote the failed call's id.
	if ids := header.Get("x-request-id"); len(ids) != 1 || !validRequestID(ids[0]) {
		t.Errorf("x-request-id %v in %v", ids, header)
	}
}

// A request shorter than the HTTP/2 preface is answered at once, not after
// the splitter gives up waiting for the rest of a preface.
func TestShortHTTP1RequestNotDelayed(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(conn, "GET /livez HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	res, err := io.ReadAll(conn) // HTTP/1.0: the gateway closes after answering
	if err != nil || !strings.HasPrefix(string(res), "HTTP/1.0 200 ") || !strings.Contains(string(res), `"status":"alive"`) {
		t.Fatalf("answer %q (%v) after %v", res, err, time.Since(start))
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("answered after %v", elapsed)
	}
}
