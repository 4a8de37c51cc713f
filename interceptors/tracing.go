package interceptors

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the instrumentation in the spans it records.
const tracerName = "github.com/flowgate/flowgate/interceptors"

// Tracing records an OpenTelemetry span for every call: a server span for a
// call handled, continuing the caller's W3C trace context when it sent one,
// and a client span for a call made, whose context goes out in the
// traceparent header so that the callee's spans are its children.
//
// A nil *Tracing records nothing, so that code paths which may or may not
// trace pay one nil check when tracing is off.
type Tracing struct {
	tracer     trace.Tracer
	propagator propagation.TraceContext
}

// NewTracing traces with tp; a nil tp gives a nil *Tracing (no tracing),
// which callers leave out of their interceptor chains.
func NewTracing(tp trace.TracerProvider) *Tracing {
	if tp == nil {
		return nil
	}
	return &Tracing{tracer: tp.Tracer(tracerName)}
}

// startServer starts the server span of a call handled, as a child of the
// trace context in header when it holds a valid one, else as a new trace's
// root.
func (t *Tracing) startServer(ctx context.Context, spec connect.Spec, peer connect.Peer, header http.Header) (context.Context, trace.Span) {
	ctx = t.propagator.Extract(ctx, propagation.HeaderCarrier(header))
	attrs := append(rpcAttributes(spec.Procedure), attribute.String("flowgate.protocol", CallerProtocol(ctx, peer)))
	if peer.Addr != "" {
		attrs = append(attrs, attribute.String("network.peer.address", peer.Addr))
	}
	return t.tracer.Start(ctx, spanName(spec.Procedure), trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

// StartClient starts the client span of a call made to procedure and puts
// its context in header, replacing whatever trace context header holds:
// a caller's traceparent copied along must not stand in for the span that
// actually makes the call. A nil *Tracing leaves header alone.
func (t *Tracing) StartClient(ctx context.Context, procedure string, header http.Header) (context.Context, trace.Span) {
	if t == nil {
		return ctx, nil
	}
	ctx, span := t.startClient(ctx, procedure)
	t.inject(ctx, header)
	return ctx, span
}

func (t *Tracing) startClient(ctx context.Context, procedure string) (context.Context, trace.Span) {
	return t.tracer.Start(ctx, spanName(procedure), trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(rpcAttributes(procedure)...))
}

func (t *Tracing) inject(ctx context.Context, header http.Header) {
	header.Del("Traceparent")
	header.Del("Tracestate")
	t.propagator.Inject(ctx, propagation.HeaderCarrier(header))
}

// EndClient records err's code on the client span of [Tracing.StartClient]
// and ends it; a nil span (from a nil *Tracing) is ignored.
func EndClient(span trace.Span, err error) { end(span, err, false) }

// end records err's code on span and ends it. A server span is marked as
// failed only for codes that mean the service failed, not its caller, as
// OpenTelemetry's RPC conventions ask; a client span for any error.
func end(span trace.Span, err error, server bool) {
	if span == nil {
		return
	}
	code := connect.Code(0)
	if err != nil {
		code = connect.CodeOf(err)
	}
	span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
	if err != nil && (serverFault(code) || !server) {
		span.SetStatus(codes.Error, errorMessage(err))
	}
	span.End()
}

func errorMessage(err error) string {
	if ce := (*connect.Error)(nil); errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// spanName is the procedure without its leading slash, as OpenTelemetry's
// RPC conventions name spans ("package.Service/Method").
func spanName(procedure string) string { return strings.TrimPrefix(procedure, "/") }

func rpcAttributes(procedure string) []attribute.KeyValue {
	service, method, _ := strings.Cut(spanName(procedure), "/")
	return []attribute.KeyValue{
		attribute.String("rpc.system", "connect_rpc"),
		attribute.String("rpc.service", service),
		attribute.String("rpc.method", method),
	}
}

func (t *Tracing) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			ctx, span := t.StartClient(ctx, req.Spec().Procedure, req.Header())
			res, err := next(ctx, req)
			end(span, err, false)
			return res, err
		}
		ctx, span := t.startServer(ctx, req.Spec(), req.Peer(), req.Header())
		res, err := next(ctx, req)
		end(span, err, true)
		return res, err
	}
}

func (t *Tracing) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, span := t.startServer(ctx, conn.Spec(), conn.Peer(), conn.RequestHeader())
		err := next(ctx, conn)
		end(span, err, true)
		return err
	}
}

func (t *Tracing) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		ctx, span := t.startClient(ctx, spec.Procedure)
		conn := next(ctx, spec)
		t.inject(ctx, conn.RequestHeader())
		return &tracedClientConn{StreamingClientConn: conn, span: span}
	}
}

// tracedClientConn ends its call's span when the call's response is
// closed, with the first error other than the end of the stream.
type tracedClientConn struct {
	connect.StreamingClientConn
	span trace.Span
	err  error
}

func (c *tracedClientConn) Receive(msg any) error {
	err := c.StreamingClientConn.Receive(msg)
	if err != nil && c.err == nil && !errors.Is(err, io.EOF) {
		c.err = err
	}
	return err
}

func (c *tracedClientConn) CloseResponse() error {
	err := c.StreamingClientConn.CloseResponse()
	end(c.span, c.err, false)
	return err
}
