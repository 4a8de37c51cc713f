package interceptors_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/flowgate/flowgate/interceptors"
)

const staleParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// tracedHealth serves gRPC health with tracing, and returns a client that
// traces too, both recording in rec.
func tracedHealth(t *testing.T, rec *tracetest.SpanRecorder) (url string, opt connect.Option) {
	t.Helper()
	tracing := interceptors.NewTracing(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	opt = connect.WithInterceptors(tracing)
	mux := http.NewServeMux()
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker("svc"), opt))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/" + grpchealth.HealthV1ServiceName, opt
}

// TestTracingClientSpanIsTheServersParent checks that a traced client
// sends its own span's context, not a trace context its request already
// carried, so that the server's span is the client span's child.
func TestTracingClientSpanIsTheServersParent(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	url, opt := tracedHealth(t, rec)
	client := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](http.DefaultClient, url+"/Check", opt)
	req := connect.NewRequest(&healthpb.HealthCheckRequest{Service: "svc"})
	req.Header().Set("Traceparent", staleParent)
	req.Header().Set("Tracestate", "vendor=stale")
	if _, err := client.CallUnary(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	checkParenthood(t, rec.Ended(), "grpc.health.v1.Health/Check")
}

// TestTracingServerStream checks the same of a server stream, whose client
// span ends when the stream is closed, with the stream's error.
func TestTracingServerStream(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	url, opt := tracedHealth(t, rec)
	client := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](http.DefaultClient, url+"/Watch", opt)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	stream, err := client.CallServerStream(ctx, connect.NewRequest(&healthpb.HealthCheckRequest{Service: "svc"}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() || stream.Msg().GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch: %v %v, want SERVING", stream.Msg(), stream.Err())
	}
	// Watch streams until its caller leaves.
	cancel()
	for stream.Receive() {
	}
	if connect.CodeOf(stream.Err()) != connect.CodeCanceled {
		t.Fatalf("Watch: %v, want Canceled", stream.Err())
	}
	_ = stream.Close()
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.Ended()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	spans := rec.Ended()
	clientSpan := checkParenthood(t, spans, "grpc.health.v1.Health/Watch")
	if got := clientSpan.Status(); got.Code.String() != "Error" || got.Description == "" {
		t.Errorf("client span status %s %q, want Error with the message", got.Code, got.Description)
	}
}

// checkParenthood checks that spans are one client and one server span
// named name, the server's the client's child, and returns the client's.
func checkParenthood(t *testing.T, spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	byKind := map[trace.SpanKind]sdktrace.ReadOnlySpan{}
	for _, span := range spans {
		if span.Name() != name {
			t.Errorf("span %q, want %q", span.Name(), name)
		}
		byKind[span.SpanKind()] = span
	}
	client, server := byKind[trace.SpanKindClient], byKind[trace.SpanKindServer]
	if len(spans) != 2 || client == nil || server == nil {
		t.Fatalf("%d spans %v, want a client and a server span", len(spans), byKind)
	}
	if client.Parent().IsValid() {
		t.Errorf("client span has parent %s, want a new trace", client.Parent().SpanID())
	}
	if got := server.Parent(); got.SpanID() != client.SpanContext().SpanID() || got.TraceID() != client.SpanContext().TraceID() {
		t.Errorf("server span's parent %s/%s, want the client span %s/%s", got.TraceID(), got.SpanID(), client.SpanContext().TraceID(), client.SpanContext().SpanID())
	}
	if ts := server.Parent().TraceState().String(); ts != "" {
		t.Errorf("server saw trace state %q, want none", ts)
	}
	return client
}

// TestTracingOff checks that no provider means no tracing, and that the
// forwarding path's calls on a nil *Tracing leave requests alone.
func TestTracingOff(t *testing.T) {
	t.Parallel()
	tracing := interceptors.NewTracing(nil)
	if tracing != nil {
		t.Fatal("NewTracing(nil) is not nil")
	}
	header := http.Header{"Traceparent": {staleParent}}
	ctx, span := tracing.StartClient(context.Background(), "/svc/Method", header)
	interceptors.EndClient(span, nil)
	if span != nil || trace.SpanContextFromContext(ctx).IsValid() || header.Get("Traceparent") != staleParent {
		t.Errorf("nil tracing started span %v, header %v", span, header)
	}
}
