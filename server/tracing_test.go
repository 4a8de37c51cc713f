package server

import (
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/flowgate/flowgate/backends"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// callerTrace is the trace context a caller sends in the tests that
// continue one.
const (
	callerTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpanID  = "00f067aa0ba902b7"
	callerParent  = "00-" + callerTraceID + "-" + callerSpanID + "-01"
)

const listDeployments = "workflow.runtime.v1.WorkflowRuntimeService/ListDeployments"

// tracedStack runs the reference backends and a gateway in front of them,
// each recording its spans in its own recorder.
type tracedStack struct {
	gw                *Gateway
	base              string
	gateway, backends *tracetest.SpanRecorder
}

func startTraced(t *testing.T, upstreamProtocol string) tracedStack {
	t.Helper()
	s := tracedStack{gateway: tracetest.NewSpanRecorder(), backends: tracetest.NewSpanRecorder()}
	cfg := Config{TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.gateway))}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.backends)),
	})
	cfg.Runtime.Protocol = upstreamProtocol
	s.gw, s.base = startGateway(t, cfg)
	return s
}

// TestTracingSpansAcrossGatewayAndBackend checks that a call through the
// gateway leaves a gateway server span, a gateway client span for the
// upstream call, and a backend server span, in one trace and in that order
// of parenthood, for a REST and a gRPC caller, whatever the upstream's
// protocol; and that a caller's trace context is continued, not forwarded
// in place of the gateway's.
func TestTracingSpansAcrossGatewayAndBackend(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, upstream, protocol string
		traceparent              string
		call                     func(t *testing.T, base, traceparent string)
	}{
		{"rest", "grpc", "rest", "", restList},
		{"rest with traceparent", "grpc", "rest", callerParent, restList},
		{"rest to connect upstream with traceparent", "connect", "rest", callerParent, restList},
		{"grpc", "grpc", "grpc", "", rpcList(connect.WithGRPC())},
		{"grpc with traceparent", "grpc", "grpc", callerParent, rpcList(connect.WithGRPC())},
		{"connect with traceparent", "grpc", "connect", callerParent, rpcList()},
		{"grpcweb with traceparent", "grpc", "grpcweb", callerParent, rpcList(connect.WithGRPCWeb())},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := startTraced(t, tc.upstream)
			tc.call(t, s.base, tc.traceparent)
			if tc.protocol == "grpc" && s.gw.fast.served.Load() == 0 {
				t.Error("the gRPC call did not take the grpc-go path")
			}
			gwServer := waitSpan(t, s.gateway, trace.SpanKindServer)
			gwClient := waitSpan(t, s.gateway, trace.SpanKindClient)
			backend := waitSpan(t, s.backends, trace.SpanKindServer)

			for _, span := range []sdktrace.ReadOnlySpan{gwServer, gwClient, backend} {
				if span.Name() != listDeployments {
					t.Errorf("%s span named %q, want %q", span.SpanKind(), span.Name(), listDeployments)
				}
			}
			traceID := gwServer.SpanContext().TraceID()
			if tc.traceparent != "" {
				if traceID.String() != callerTraceID || gwServer.Parent().SpanID().String() != callerSpanID || !gwServer.Parent().IsRemote() {
					t.Errorf("gateway span %s, parent %s: want a child of the caller's %s", gwServer.SpanContext().SpanID(), gwServer.Parent().SpanID(), callerParent)
				}
			} else if gwServer.Parent().IsValid() {
				t.Errorf("gateway span has parent %s, want a new trace's root", gwServer.Parent().SpanID())
			}
			if got := gwClient.Parent(); got.TraceID() != traceID || got.SpanID() != gwServer.SpanContext().SpanID() {
				t.Errorf("upstream call's span parent %s/%s, want the gateway's server span %s/%s", got.TraceID(), got.SpanID(), traceID, gwServer.SpanContext().SpanID())
			}
			if got := backend.Parent(); got.TraceID() != traceID || got.SpanID() != gwClient.SpanContext().SpanID() || !got.IsRemote() {
				t.Errorf("backend span parent %s/%s, want the gateway's upstream call %s/%s", got.TraceID(), got.SpanID(), traceID, gwClient.SpanContext().SpanID())
			}
			wantAttrs := map[attribute.Key]attribute.Value{
				"rpc.system":           attribute.StringValue("connect_rpc"),
				"rpc.service":          attribute.StringValue("workflow.runtime.v1.WorkflowRuntimeService"),
				"rpc.method":           attribute.StringValue("ListDeployments"),
				"rpc.grpc.status_code": attribute.IntValue(0),
				"flowgate.protocol":    attribute.StringValue(tc.protocol),
			}
			checkAttrs(t, gwServer, wantAttrs)
			delete(wantAttrs, "flowgate.protocol")
			checkAttrs(t, gwClient, wantAttrs)
			checkAttrs(t, backend, wantAttrs)
		})
	}
}

// TestTracingFailedCall checks that a call the backend refuses records
// its code on every span, and marks as failed only the client span: the
// caller's mistake is not the service's failure.
func TestTracingFailedCall(t *testing.T) {
	t.Parallel()
	s := startTraced(t, "grpc")
	resp, err := http.Get(s.base + "/api/v1/workflow/deployments/no-such-deployment")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
	notFound := attribute.IntValue(int(connect.CodeNotFound))
	gwServer := waitSpan(t, s.gateway, trace.SpanKindServer)
	gwClient := waitSpan(t, s.gateway, trace.SpanKindClient)
	checkAttrs(t, gwServer, map[attribute.Key]attribute.Value{"rpc.grpc.status_code": notFound, "rpc.method": attribute.StringValue("GetDeployment")})
	checkAttrs(t, gwClient, map[attribute.Key]attribute.Value{"rpc.grpc.status_code": notFound})
	if got := gwServer.Status().Code.String(); got != "Unset" {
		t.Errorf("server span status %s, want Unset", got)
	}
	if got := gwClient.Status(); got.Code.String() != "Error" || got.Description == "" {
		t.Errorf("client span status %s %q, want Error with the message", got.Code, got.Description)
	}
}

func restList(t *testing.T, base, traceparent string) {
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/api/v1/workflow/deployments", nil)
	if err != nil {
		t.Fatal(err)
	}
	if traceparent != "" {
		req.Header.Set("Traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// rpcList lists deployments as an RPC caller speaking the protocol opts
// choose (gRPC on its own connection goes the grpc-go path).
func rpcList(opts ...connect.ClientOption) func(t *testing.T, base, traceparent string) {
	return func(t *testing.T, base, traceparent string) {
		client := runtimev1connect.NewWorkflowRuntimeServiceClient(h2cClient(t), base, opts...)
		req := connect.NewRequest(&runtimev1.ListDeploymentsRequest{})
		if traceparent != "" {
			req.Header().Set("Traceparent", traceparent)
		}
		if _, err := client.ListDeployments(t.Context(), req); err != nil {
			t.Fatal(err)
		}
	}
}

// waitSpan returns the one span of kind that rec saw end, waiting for it:
// a server may answer before its span ends.
func waitSpan(t *testing.T, rec *tracetest.SpanRecorder, kind trace.SpanKind) sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found []sdktrace.ReadOnlySpan
		for _, span := range rec.Ended() {
			if span.SpanKind() == kind {
				found = append(found, span)
			}
		}
		if len(found) > 1 {
			t.Fatalf("%d %s spans, want 1: %v", len(found), kind, spanNames(found))
		}
		if len(found) == 1 {
			return found[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s span ended; saw %v", kind, spanNames(rec.Ended()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	names := make([]string, len(spans))
	for i, span := range spans {
		names[i] = span.SpanKind().String() + " " + span.Name()
	}
	return names
}

func checkAttrs(t *testing.T, span sdktrace.ReadOnlySpan, want map[attribute.Key]attribute.Value) {
	t.Helper()
	got := map[attribute.Key]attribute.Value{}
	for _, kv := range span.Attributes() {
		got[kv.Key] = kv.Value
	}
	for key, value := range want {
		if got[key] != value {
			t.Errorf("%s span %s: %s = %v, want %v", span.SpanKind(), span.Name(), key, got[key].Emit(), value.Emit())
		}
	}
}
