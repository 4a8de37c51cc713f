// Package sse turns any server-streaming Connect procedure into a
// text/event-stream response for browsers' EventSource.
//
// A [Bridge] knows nothing of the messages it carries: it resolves the
// procedure's request and response types from the protobuf registry, builds
// the request message from the query string, calls the procedure's Connect
// streaming handler function in process (the same function, interceptors
// included, that serves the procedure over Connect, gRPC and gRPC-Web), and
// writes one event per response message as protojson with proto field
// names. Authentication, rate limits and logging therefore apply to a
// stream exactly as they apply to the same call made over any other
// protocol.
//
// An open stream costs little: on HTTP/1.1 the bridge takes the connection
// from net/http once the request is read, so a waiting stream keeps neither
// the server's connection goroutine nor its buffers, only its own goroutine
// and an entry in a shared watcher that notices the browser leaving.
package sse

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
)

// DefaultHeartbeat is how often a comment line is written to an idle stream
// so that proxies and browsers do not time it out.
const DefaultHeartbeat = 15 * time.Second

// DefaultRetry is the reconnection delay advised with a retryable error
// (an unavailable upstream, a server shutting down) when [Config.Retry]
// advises none.
const DefaultRetry = 3 * time.Second

// DefaultForwardHeaders are the caller's headers the handler sees as the
// call's request headers. Everything else (Accept, Accept-Encoding, Last-Event-ID, ...)
// describes the SSE exchange, not the call.
var DefaultForwardHeaders = []string{
	"Authorization",
	"Cookie",
	"X-Request-Id",
	"Traceparent",
	"Tracestate",
	"X-Forwarded-For",
	"X-Forwarded-Proto",
	"X-Real-Ip",
	"User-Agent",
	"Origin",
}

// DefaultIgnoredParams are query parameters that are never copied into the
// request message: credentials belong to the HTTP layer, not the call.
var DefaultIgnoredParams = []string{"access_token"}

// Config describes one SSE route.
type Config struct {
	// Handler serves the procedure. It sees the stream as a
	// [connect.StreamingHandlerConn] whose only request message is built
	// from the query string, and whose messages become events.
	Handler connect.StreamingHandlerFunc
	// Codec converts between the handler's message values and protobuf
	// binary. Nil: the handler receives and sends proto.Message values of
	// the procedure's types.
	Codec connect.Codec
	// Procedure is the Connect procedure path, "/pkg.Service/Method". It must
	// be server-streaming and its types must be in protoregistry.GlobalFiles.
	Procedure string
	// EventIDField names a string or integer field of the response message
	// whose value becomes the event's id. Empty: ids count 1, 2, 3...
	EventIDField string
	// ResumeField names a request field set from the Last-Event-ID header so
	// that a reconnecting browser resumes after the last event it saw.
	ResumeField string
	// Heartbeat is the interval of comment heartbeats; 0 means
	// [DefaultHeartbeat], negative disables them.
	Heartbeat time.Duration
	// Retry is the reconnection delay advised to the browser; 0 sends none
	// but with a retryable error, which advises [DefaultRetry].
	Retry time.Duration
	// ForwardHeaders overrides [DefaultForwardHeaders] when non-nil.
	ForwardHeaders []string
	// IgnoredParams are added to [DefaultIgnoredParams].
	IgnoredParams []string
	// Logger receives failures; nil discards.
	Logger *slog.Logger
}

// Bridge serves one server-streaming procedure as Server-Sent Events.
type Bridge struct {
	handler    connect.StreamingHandlerFunc
	codec      connect.Codec // nil: proto.Message values
	spec       connect.Spec
	procedure  string
	reqType    protoreflect.MessageType
	respType   protoreflect.MessageType
	eventID    protoreflect.FieldDescriptor
	resume     protoreflect.FieldDescriptor
	heartbeat  time.Duration
	retry      time.Duration
	forward    []string
	ignored    map[string]struct{}
	logger     *slog.Logger
	retryField []byte
	// outageRetry is the retry advice sent with a retryable error.
	outageRetry []byte
	beats       *heartbeats // nil without heartbeats
	// closing is set once the server shuts down: streams that fail from
	// then on are told so, and new ones are turned away at once.
	closing atomic.Bool

	// detached are the streams served off net/http's connection (HTTP/1.1
	// connections taken over), which http.Server.Shutdown cannot see.
	mu       sync.Mutex
	detached map[*stream]func() // each cuts its stream
	drained  chan struct{}      // closed when detached empties during Shutdown
}

// New validates cfg and resolves the procedure's message types.
func New(cfg Config) (*Bridge, error) {
	if cfg.Handler == nil {
		return nil, errors.New("sse: Config.Handler is nil")
	}
	method, err := resolveMethod(cfg.Procedure)
	if err != nil {
		return nil, err
	}
	b := &Bridge{
		handler: cfg.Handler,
		codec:   cfg.Codec,
		spec: connect.Spec{
			StreamType: connect.StreamTypeServer,
			Schema:     method,
			Procedure:  cfg.Procedure,
		},
		detached:  map[*stream]func(){},
		procedure: cfg.Procedure,
		reqType:   messageType(method.Input()),
		respType:  messageType(method.Output()),
		heartbeat: cfg.Heartbeat,
		retry:     cfg.Retry,
		forward:   cfg.ForwardHeaders,
		ignored:   map[string]struct{}{},
		logger:    cfg.Logger,
	}
	if b.heartbeat == 0 {
		b.heartbeat = DefaultHeartbeat
	}
	if b.heartbeat > 0 {
		b.beats = newHeartbeats(b.heartbeat)
	}
	if b.retry < 0 {
		return nil, fmt.Errorf("sse: negative retry %v for %q", b.retry, cfg.Procedure)
	}
	b.outageRetry = retryField(DefaultRetry)
	if b.retry > 0 {
		b.retryField = retryField(b.retry)
		b.outageRetry = b.retryField
	}
	if b.forward == nil {
		b.forward = DefaultForwardHeaders
	}
	forward := make([]string, len(b.forward))
	for i, name := range b.forward {
		forward[i] = http.CanonicalHeaderKey(name)
	}
	b.forward = forward
	for _, p := range append(append([]string{}, DefaultIgnoredParams...), cfg.IgnoredParams...) {
		b.ignored[p] = struct{}{}
	}
	if b.logger == nil {
		b.logger = slog.New(slog.DiscardHandler)
	}
	if cfg.EventIDField != "" {
		if b.eventID, err = scalarField(method.Output(), cfg.EventIDField); err != nil {
			return nil, err
		}
	}
	if cfg.ResumeField != "" {
		if b.resume, err = scalarField(method.Input(), cfg.ResumeField); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func retryField(d time.Duration) []byte {
	return fmt.Appendf(nil, "retry: %d\n\n", d.Milliseconds())
}

func resolveMethod(procedure string) (protoreflect.MethodDescriptor, error) {
	trimmed := strings.TrimPrefix(procedure, "/")
	service, name, ok := strings.Cut(trimmed, "/")
	if !ok || trimmed == procedure || service == "" || name == "" {
		return nil, fmt.Errorf("sse: procedure %q is not of the form /pkg.Service/Method", procedure)
	}
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return nil, fmt.Errorf("sse: could not resolve service of procedure %q: %w", procedure, err)
	}
	sd, ok := desc.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("sse: %q is not a service", service)
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return nil, fmt.Errorf("sse: service %q has no method %q", service, name)
	}
	if !md.IsStreamingServer() || md.IsStreamingClient() {
		return nil, fmt.Errorf("sse: procedure %q is not server-streaming", procedure)
	}
	return md, nil
}

// messageType prefers the generated type when it is linked in, so that
// interceptors and loggers see the same Go types everywhere.
func messageType(md protoreflect.MessageDescriptor) protoreflect.MessageType {
	if mt, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName()); err == nil {
		return mt
	}
	return dynamicpb.NewMessageType(md)
}

func scalarField(md protoreflect.MessageDescriptor, name string) (protoreflect.FieldDescriptor, error) {
	fd := md.Fields().ByName(protoreflect.Name(name))
	if fd == nil {
		return nil, fmt.Errorf("sse: message %q has no field %q", md.FullName(), name)
	}
	if fd.IsList() || fd.IsMap() {
		return nil, fmt.Errorf("sse: field %q of %q must be a singular scalar", name, md.FullName())
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind, protoreflect.BytesKind, protoreflect.EnumKind, protoreflect.BoolKind,
		protoreflect.FloatKind, protoreflect.DoubleKind:
		return nil, fmt.Errorf("sse: field %q of %q must be a string or integer", name, md.FullName())
	}
	return fd, nil
}
