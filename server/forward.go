package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
)

// forwarder relays one RPC to its upstream. A forwarder is built once per
// method at start-up; a call allocates only its outgoing request.
type forwarder struct {
	upstream   string // the upstream's name, for error messages and logs
	client     *connect.Client[frame, frame]
	headers    headerPolicy
	maxTimeout time.Duration
	logger     *slog.Logger
	hooks      methodHooks
	shutdown   context.Context //nolint:containedctx // the gateway's lifetime
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
	ctx, cancel := f.deadline(ctx, true)
	defer cancel()
	out, err := f.outgoing(in)
	if err != nil {
		return nil, err
	}
	res, err := f.client.CallUnary(ctx, out)
	if err != nil {
		return nil, f.upstreamError(err)
	}
	reply := connect.NewResponse(res.Msg)
	copyResponse(reply.Header(), res.Header())
	copyResponse(reply.Trailer(), res.Trailer())
	if f.hooks.response != nil {
		if err := f.hooks.response(reply); err != nil {
			return nil, err
		}
	}
	return reply, nil
}

// serverStream relays a server stream message by message as each arrives.
// When the caller goes away its context is canceled, which cancels the
// upstream call at once.
func (f *forwarder) serverStream(ctx context.Context, in *connect.Request[frame], stream *connect.ServerStream[frame]) error {
	ctx, cancel := f.deadline(ctx, false)
	defer cancel()
	ctx, endStream := context.WithCancelCause(ctx)
	defer endStream(nil)
	defer context.AfterFunc(f.shutdown, func() { endStream(errShuttingDown) })()
	out, err := f.outgoing(in)
	if err != nil {
		return err
	}
	upstream, err := f.client.CallServerStream(ctx, out)
	if err != nil {
		return f.upstreamError(err)
	}
	defer upstream.Close()
	headersCopied := false
	for upstream.Receive() {
		if !headersCopied {
			// The upstream's headers are known once its first message arrives;
			// they must reach the caller before that message does.
			copyResponse(stream.ResponseHeader(), upstream.ResponseHeader())
			headersCopied = true
		}
		if err := stream.Send(upstream.Msg()); err != nil {
			return err
		}
	}
	if !headersCopied {
		copyResponse(stream.ResponseHeader(), upstream.ResponseHeader())
	}
	if err := upstream.Err(); err != nil {
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			return connect.NewError(connect.CodeUnavailable, errShuttingDown)
		}
		return f.upstreamError(err)
	}
	copyResponse(stream.ResponseTrailer(), upstream.ResponseTrailer())
	return nil
}

var errShuttingDown = errors.New("the gateway is shutting down; reconnect")

// outgoing builds a fresh request for the upstream. Reusing the incoming
// request would carry the caller's protocol headers, authority and encoding
// along with it.
func (f *forwarder) outgoing(in *connect.Request[frame]) (*connect.Request[frame], error) {
	out := connect.NewRequest(in.Msg)
	f.headers.copyRequest(out.Header(), in.Header())
	if f.hooks.request != nil {
		if err := f.hooks.request(in, out); err != nil {
			return nil, err
		}
	}
	return out, nil
}

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
// upstream failed and nothing of the gateway's internals.
func (f *forwarder) upstreamError(err error) error {
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
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%s did not answer in time", f.upstream))
	default:
		f.logger.Warn("upstream unreachable", slog.String("upstream", f.upstream), slog.String("error", ce.Message()))
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s is unavailable", f.upstream))
	}
}
