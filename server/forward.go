package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/internal/apierr"
)

// forwarder relays one RPC to its upstream. A forwarder is built once per
// method at start-up; a call allocates only its outgoing request.
type forwarder struct {
	upstream  string // the upstream's name, for error messages and logs
	procedure string
	method    int // index of the method in its service, for the replicas' callers
	pool      *replicaPool
	stats     *upstreamStats
	// idempotent methods may be retried after they reached an upstream;
	// attempts bounds the tries of a call, retries included.
	idempotent bool
	attempts   int
	headers    headerPolicy
	maxTimeout time.Duration
	logger     *slog.Logger
	hooks      methodHooks
	shutdown   context.Context //nolint:containedctx // the gateway's lifetime
	// tracing records the upstream call's client span; nil when off.
	tracing *interceptors.Tracing
}

// methodHooks lets a method adjust a forwarded call, for the few RPCs whose
// HTTP shape carries more than the transcoder maps (webhooks).
type methodHooks struct {
	// request adjusts the outgoing request, given the incoming one.
	request func(in *connect.Request[frame], out *connect.Request[frame]) error
	// response adjusts the response returned to the caller.
	response func(res *connect.Response[frame]) error
}

func (f *forwarder) unary(ctx context.Context, in *connect.Request[frame]) (*connect.Response[frame], error) {
	out, err := f.outgoing(in)
	if err != nil {
		return nil, err
	}
	reply, err := f.callUnary(ctx, out)
	if err != nil {
		return nil, err
	}
	return reply.response(), nil
}

// callUnary sends out upstream and returns the caller's response. A call
// that failed where it may be retried (see retryable) is tried again on
// another replica when there is one, after a jittered backoff.
func (f *forwarder) callUnary(ctx context.Context, out *connect.Request[frame]) (*upstreamReply, error) {
	_, asked := ctx.Deadline()
	ctx, cancel := f.deadline(ctx, true)
	defer cancel()
	// The cap on a call that asked for no deadline is the gateway's own
	// guard, kept by canceling the upstream call when it ends; it is not
	// sent upstream as the caller's deadline. The backend is spared
	// decoding a new grpc-timeout on every call (a value that is never the
	// same twice, so HPACK cannot index it and it churns the header table
	// of the connection) and a timer of its own.
	upstreamCtx := ctx
	if !asked && f.maxTimeout > 0 {
		upstreamCtx = unadvertisedDeadline{ctx}
	}
	start := time.Now()
	f.pool.budget.call()
	var failed *replica
	var lastErr error
	for attempt := 1; ; attempt++ {
		rep, err := f.pool.pick(failed, true)
		if err != nil {
			if lastErr == nil {
				f.stats.refused.Inc()
				return nil, err
			}
			// Nowhere left to retry: the caller gets the last failure.
			return nil, f.endUnary(start, f.upstreamError(ctx, lastErr))
		}
		actx, span := f.tracing.StartClient(upstreamCtx, f.procedure, out.Header())
		reply, err := rep.callers[f.method].unary(actx, out)
		interceptors.EndClient(span, err)
		// One reading of the clock for the replica's sign of life and the
		// call's duration.
		end := time.Now()
		rep.finishAt(ctx, err, true, end)
		if err == nil {
			f.stats.unary(nil, end.Sub(start))
			if f.hooks.response != nil {
				return f.hookResponse(reply)
			}
			return reply, nil
		}
		if !f.retryable(ctx, err, attempt) || !waitRetry(ctx, attempt) {
			return nil, f.endUnary(start, f.upstreamError(ctx, err))
		}
		failed, lastErr = rep, err
	}
}

// hookResponse runs the method's response hook on reply.
func (f *forwarder) hookResponse(reply *upstreamReply) (*upstreamReply, error) {
	res := reply.response()
	if err := f.hooks.response(res); err != nil {
		return nil, err
	}
	return &upstreamReply{msg: res.Msg, header: res.Header(), trailer: res.Trailer()}, nil
}

// endUnary counts a unary call that failed with err, the caller's error.
func (f *forwarder) endUnary(start time.Time, err error) error {
	f.stats.unary(err, time.Since(start))
	return err
}

// unaryConn serves a unary call handed over as a stream connection (the
// grpc-go path for gRPC callers).
func (f *forwarder) unaryConn(ctx context.Context, conn connect.StreamingHandlerConn) error {
	call, _ := connCalls.Get().(*connCall)
	if call == nil {
		call = new(connCall)
	}
	defer f.releaseCall(call)
	msg := &call.msg
	if err := conn.Receive(msg); err != nil {
		return err
	}
	out := &call.out
	out.Msg = msg
	f.headers.copyRequest(out.Header(), conn.RequestHeader())
	if f.hooks.request != nil {
		in := connect.NewRequest(msg)
		copyAll(in.Header(), conn.RequestHeader())
		if err := f.hooks.request(in, out); err != nil {
			return err
		}
	}
	reply, err := f.callUnary(ctx, out)
	if err != nil {
		return err
	}
	copyAll(conn.ResponseHeader(), reply.header)
	if err := conn.Send(reply.msg); err != nil {
		return err
	}
	copyAll(conn.ResponseTrailer(), reply.trailer)
	return nil
}

// connCall is the request message and the upstream request of a unary
// call on the connection path.
type connCall struct {
	msg frame
	out connect.Request[frame]
}

// connCalls holds finished calls' connCalls for new ones.
var connCalls sync.Pool

// releaseCall keeps call for another if nothing can hold its request any
// longer: grpc-go reads a request's headers while it opens the call, where
// connect-go's client puts them in an HTTP request of its own; a request
// hook may keep what it was given.
func (f *forwarder) releaseCall(call *connCall) {
	if f.hooks.request != nil || !f.grpcOnly() {
		return
	}
	h := call.out.Header()
	if len(h) > reusedHeaderNames {
		return
	}
	clear(h)
	call.msg = frame{}
	call.out.Msg = nil
	connCalls.Put(call)
}

// grpcOnly reports whether the forwarder's replicas are called with grpc-go
// (an upstream's replicas all are, or none).
func (f *forwarder) grpcOnly() bool { return f.pool.grpcOnly.Load() }

func copyAll(dst, src http.Header) {
	for name, vals := range src {
		dst[name] = append(dst[name], vals...)
	}
}

// serverStream relays a server stream message by message as each arrives.
func (f *forwarder) serverStream(ctx context.Context, in *connect.Request[frame], stream *connect.ServerStream[frame]) error {
	out, err := f.outgoing(in)
	if err != nil {
		return err
	}
	return f.relay(ctx, out, stream)
}

// streamingHandler serves a server stream to a caller in process (the SSE
// bridge), which hands over the request message and headers directly
// rather than encoded in an HTTP request.
func (f *forwarder) streamingHandler(ctx context.Context, conn connect.StreamingHandlerConn) error {
	var msg frame
	if err := conn.Receive(&msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	// Request hooks are for unary methods only (buildService checks).
	return f.relay(ctx, f.request(&msg, conn.RequestHeader()), connSink{conn})
}

// streamSink is the caller's side of a relayed stream.
type streamSink interface {
	Send(*frame) error
	ResponseHeader() http.Header
	ResponseTrailer() http.Header
}

type connSink struct{ connect.StreamingHandlerConn }

func (c connSink) Send(msg *frame) error { return c.StreamingHandlerConn.Send(msg) }

// relay sends out upstream and relays its stream to the caller. When the
// caller goes away its context is canceled, which cancels the upstream
// call at once.
func (f *forwarder) relay(ctx context.Context, out *connect.Request[frame], stream streamSink) (err error) {
	ctx, cancel := f.deadline(ctx, false)
	defer cancel()
	ctx, span := f.tracing.StartClient(ctx, f.procedure, out.Header())
	defer func() { interceptors.EndClient(span, err) }()
	ctx, endStream := context.WithCancelCause(ctx)
	defer endStream(nil)
	defer context.AfterFunc(f.shutdown, func() { endStream(errShuttingDown) })()
	f.pool.budget.call()
	var failed *replica
	var lastErr error
	for attempt := 1; ; attempt++ {
		rep, perr := f.pool.pick(failed, false)
		if perr != nil {
			if lastErr == nil {
				f.stats.refused.Inc()
				return perr
			}
			err = f.upstreamError(ctx, lastErr)
			f.stats.call(err)
			return err
		}
		var retry bool
		if retry, err = f.relayOpen(ctx, rep, attempt, out, stream); !retry {
			f.stats.call(err)
			return err
		}
		failed, lastErr = rep, err
	}
}

// relayOpen relays the stream from one replica once it let the call in.
// Until the first message a failed stream may be retried: it then returns
// true and the upstream's error, having waited the backoff.
func (f *forwarder) relayOpen(ctx context.Context, rep *replica, attempt int, out *connect.Request[frame], stream streamSink) (bool, error) {
	upstream, err := rep.callers[f.method].serverStream(ctx, out)
	rep.finish(ctx, err, false)
	if err != nil {
		if f.retryable(ctx, err, attempt) && waitRetry(ctx, attempt) {
			return true, err
		}
		return false, f.upstreamError(ctx, err)
	}
	defer upstream.Close()
	received, err := pump(upstream, stream)
	if err != nil {
		return false, err
	}
	if err := upstream.Err(); err != nil {
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			return false, connect.NewError(connect.CodeUnavailable, errShuttingDown)
		}
		if !received {
			rep.finish(ctx, err, false)
			if f.retryable(ctx, err, attempt) && waitRetry(ctx, attempt) {
				return true, err
			}
			forwardHeaders(upstream, stream)
		}
		return false, f.upstreamError(ctx, err)
	}
	if !received {
		forwardHeaders(upstream, stream)
	}
	forwardTrailers(upstream, stream)
	return false, nil
}

// pump sends the caller each message as it arrives. An idle stream waits
// here, in a goroutine that every open stream keeps: pump is kept out of
// relay so that its waiting frame stays small, and the runtime can shrink
// the goroutine's stack once the first messages are sent.
//
//go:noinline
func pump(upstream upstreamStream, stream streamSink) (received bool, err error) {
	headersCopied := false
	for upstream.Receive() {
		if !headersCopied {
			// The upstream's headers are known once its first message arrives;
			// they must reach the caller before that message does.
			forwardHeaders(upstream, stream)
			headersCopied = true
		}
		if err := stream.Send(upstream.Msg()); err != nil {
			return true, err
		}
	}
	// Headers of a stream that sent nothing are the caller's to forward,
	// once it decided not to retry it.
	return headersCopied, nil
}

// forwardHeaders and forwardTrailers are not inlined: connect's accessors
// build an empty header map in the caller's frame, which would then stay
// on every open stream's stack.
//
//go:noinline
func forwardHeaders(upstream upstreamStream, stream streamSink) {
	copyResponse(stream.ResponseHeader(), upstream.ResponseHeader())
}

//go:noinline
func forwardTrailers(upstream upstreamStream, stream streamSink) {
	copyResponse(stream.ResponseTrailer(), upstream.ResponseTrailer())
}

var errShuttingDown = apierr.Public("the gateway is shutting down; reconnect")

// outgoing builds a fresh request for the upstream. Reusing the incoming
// request would carry the caller's protocol headers, authority and encoding
// along with it.
func (f *forwarder) outgoing(in *connect.Request[frame]) (*connect.Request[frame], error) {
	out := f.request(in.Msg, in.Header())
	if f.hooks.request != nil {
		if err := f.hooks.request(in, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// request is an upstream request for msg carrying the allowlisted headers
// of the caller's.
func (f *forwarder) request(msg *frame, header http.Header) *connect.Request[frame] {
	out := connect.NewRequest(msg)
	f.headers.copyRequest(out.Header(), header)
	return out
}

// unadvertisedDeadline is a context whose deadline its upstream call does
// not send: the call still ends when the context does.
type unadvertisedDeadline struct{ context.Context } //nolint:containedctx // a view of the call's context

func (unadvertisedDeadline) Deadline() (time.Time, bool) { return time.Time{}, false }

// deadline caps the caller's deadline at the configured maximum. Unary calls
// without a deadline get the maximum; streams without one may stay open.
func (f *forwarder) deadline(ctx context.Context, unary bool) (context.Context, context.CancelFunc) {
	if f.maxTimeout <= 0 {
		return ctx, func() {}
	}
	if d, ok := ctx.Deadline(); ok {
		if time.Until(d) <= f.maxTimeout {
			return ctx, func() {}
		}
	} else if !unary {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, f.maxTimeout)
}

// upstreamError turns what an upstream client returned into the error the
// caller gets. An error the upstream sent (a wire error) keeps its code,
// message, details and metadata; connect would drop the metadata of a wire
// error returned as is, so it is rebuilt. A transport failure says which
// upstream failed and nothing of the gateway's internals. A call canceled
// while its caller is still there was canceled by the upstream's side (a
// backend shutting down, a connection lost): Unavailable, which tells the
// caller that trying again may work, where Canceled would not.
func (f *forwarder) upstreamError(ctx context.Context, err error) error {
	if ctx.Err() == nil && connect.CodeOf(err) == connect.CodeCanceled {
		f.logger.Warn("upstream canceled a call", slog.String("upstream", f.upstream), slog.Any("error", err))
		return f.unavailable()
	}
	if we := (*wireError)(nil); errors.As(err, &we) {
		return we.err
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		f.logger.Error("upstream call failed", slog.String("upstream", f.upstream), slog.Any("error", err))
		return connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	if connect.IsWireError(ce) {
		rebuilt := connect.NewError(ce.Code(), errorText(ce.Message()))
		for _, detail := range ce.Details() {
			rebuilt.AddDetail(detail)
		}
		copyResponse(rebuilt.Meta(), ce.Meta())
		return rebuilt
	}
	switch ce.Code() {
	case connect.CodeCanceled:
		return connect.NewError(connect.CodeCanceled, errors.New("call canceled"))
	case connect.CodeDeadlineExceeded:
		return connect.NewError(connect.CodeDeadlineExceeded, apierr.Public(f.upstream+" did not answer in time"))
	default:
		f.logger.Warn("upstream unreachable", slog.String("upstream", f.upstream), slog.String("error", ce.Message()))
		return f.unavailable()
	}
}

func (f *forwarder) unavailable() error {
	return connect.NewError(connect.CodeUnavailable, apierr.Public(f.upstream+" is unavailable"))
}
