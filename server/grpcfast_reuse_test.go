package server

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// TestGRPCCallsShareNothing: the grpc-go path keeps a finished call's state
// for the next one, and nothing of a call reaches the next: not its request
// headers (as the gateway reads them, or as the backend gets them), nor the
// headers and trailers of its response.
func TestGRPCCallsShareNothing(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	conn := grpcGoClient(t, url)
	const procedure = "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow"
	call := func(name string, md metadata.MD) (header, trailer metadata.MD, err error) {
		ctx := t.Context()
		if md != nil {
			ctx = metadata.NewOutgoingContext(ctx, md)
		}
		err = conn.Invoke(ctx, procedure, &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}},
			new(enginev1.ExecuteWorkflowResponse), grpc.Header(&header), grpc.Trailer(&trailer))
		return header, trailer, err
	}
	for i := range 20 {
		header, trailer, err := call("hello", metadata.Pairs("x-request-id", "first-call", "idempotency-key", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		if header.Get("x-backend-header") == nil || trailer.Get("x-backend-trailer") == nil {
			t.Fatalf("call %d: the backend's headers %v and trailers %v did not pass", i, header, trailer)
		}
		header, trailer, err = call("missing", nil)
		if status.Code(err) != codes.NotFound {
			t.Fatalf("call %d: %v", i, err)
		}
		if id := header.Get("x-request-id"); len(id) != 1 || id[0] == "first-call" {
			t.Errorf("call %d: request id %v, want a new one", i, id)
		}
		if header.Get("x-backend-header") != nil || trailer.Get("x-backend-trailer") != nil {
			t.Errorf("call %d: headers %v and trailers %v of the call before", i, header, trailer)
		}
		b.engine.mu.Lock()
		seen := b.engine.headers[len(b.engine.headers)-1]
		b.engine.mu.Unlock()
		if seen.Get("X-Request-Id") == "first-call" || seen.Get("Idempotency-Key") != "" {
			t.Errorf("call %d: the backend got %v, headers of the call before", i, seen)
		}
	}
}
