package server

import (
	"context"
	"fmt"
	"sync"
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
	call := func(name string, md metadata.MD) (header, trailer metadata.MD, err error) {
		_, header, trailer, err = executeOverGRPC(t.Context(), conn, name, md)
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

// TestGRPCCallsShareNothingConcurrently: calls in flight together, each
// with its own request id and workflow name, get their own back, while
// finished calls' state is handed to new ones under them.
func TestGRPCCallsShareNothingConcurrently(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	conn := grpcGoClient(t, url)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := range 40 {
				id := fmt.Sprintf("w%d-call%d", w, i)
				res, header, _, err := executeOverGRPC(t.Context(), conn, id, metadata.Pairs("x-request-id", id))
				switch {
				case err != nil:
					errs <- fmt.Errorf("%s: %w", id, err)
				case res.GetResult().GetOutput().GetStringValue() != id:
					errs <- fmt.Errorf("%s: answer %v", id, res.GetResult().GetOutput())
				case len(header.Get("x-request-id")) != 1 || header.Get("x-request-id")[0] != id:
					errs <- fmt.Errorf("%s: request id %v", id, header.Get("x-request-id"))
				default:
					continue
				}
				return
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// executeOverGRPC runs the workflow named name through conn with grpc-go,
// sending md, and returns the answer with its headers and trailers.
func executeOverGRPC(ctx context.Context, conn *grpc.ClientConn, name string, md metadata.MD) (*enginev1.ExecuteWorkflowResponse, metadata.MD, metadata.MD, error) {
	if md != nil {
		ctx = metadata.NewOutgoingContext(ctx, md)
	}
	var header, trailer metadata.MD
	res := new(enginev1.ExecuteWorkflowResponse)
	err := conn.Invoke(ctx, "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow",
		&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}},
		res, grpc.Header(&header), grpc.Trailer(&trailer))
	return res, header, trailer, err
}
