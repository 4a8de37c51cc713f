package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/flowgate/flowgate/internal/apierr"
)

// upstreamStreamWindow is the HTTP/2 receive window of each upstream stream.
// It bounds what the gateway buffers for a server stream whose caller reads
// nothing: the upstream stops sending once the window is full. 64 KiB is
// HTTP/2's default and grpc-go's minimum; a fixed window also turns off
// grpc-go's bandwidth estimation, which would grow it to megabytes.
const upstreamStreamWindow = 64 << 10

// upstreamConnWindow is the receive window of each upstream connection. grpc-go
// returns connection window as data arrives, whether or not a stream's reader
// took it, so streams that are not read do not stall the others.
const upstreamConnWindow = 16 << 20

// dialGRPC opens the grpc-go client connection of one upstream. grpc-go's
// transport writes a call as one batched flush of few frames, which costs
// both the gateway and the backend about half of what net/http's HTTP/2
// client costs per call. The connection is opened lazily and reopened with
// a short backoff (and at once when a call finds it refused; see
// upstreamGuard), so a backend that restarts is reachable again at once.
func dialGRPC(base *url.URL, dialTimeout time.Duration, maxRecv int) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if base.Scheme == "https" {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	return grpc.NewClient("passthrough:///"+base.Host,
		grpc.WithTransportCredentials(creds),
		grpc.WithAuthority(base.Host),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: dialTimeout,
		}),
		// Notice a dead upstream connection instead of waiting on it.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.WithInitialWindowSize(upstreamStreamWindow),
		grpc.WithInitialConnWindowSize(upstreamConnWindow),
		grpc.WithSharedWriteBuffer(true),
		// Retries are the caller's decision: the gateway does not know which
		// calls are safe to repeat.
		grpc.WithDisableRetry(),
		grpc.WithUserAgent("flowgate"),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(frameCodec{}),
			grpc.MaxCallRecvMsgSize(maxRecv),
			grpc.MaxCallSendMsgSize(maxRecv),
		),
	)
}

// grpcCaller calls one method of an upstream over a grpc-go connection.
type grpcCaller struct {
	*grpcUpstream
	procedure string
}

// grpcUpstream is the connection of one gRPC upstream and what the callers
// of its methods share about it.
type grpcUpstream struct {
	conn *grpc.ClientConn
	// h2 makes the unary calls it can; nil where grpc-go makes them all.
	h2 *h2Client
	// alone reports whether the connection's upstream has no other
	// replica: only then is a call worth holding for a redial.
	alone func() bool
	// redialing is set while one call waits for a redial.
	redialing atomic.Bool
}

// redialWait bounds how long a call waits for a refused upstream to be
// redialled before it fails.
const redialWait = 250 * time.Millisecond

// redialIfDown makes a call to an upstream whose connection was refused
// try to connect again at once, as a fresh dial would, rather than fail
// until grpc-go's backoff ends: a backend that is back is used at once.
// One call at a time waits for the redial; the others fail fast meanwhile.
// Where another replica can take the call, none waits: it fails fast and
// is retried there.
func (c grpcCaller) redialIfDown(ctx context.Context) {
	if c.conn.GetState() != connectivity.TransientFailure {
		return
	}
	if !c.alone() {
		c.conn.ResetConnectBackoff()
		return
	}
	if !c.redialing.CompareAndSwap(false, true) {
		return
	}
	defer c.redialing.Store(false)
	c.conn.ResetConnectBackoff()
	// grpc-go reports transient failure until a connection is ready, so
	// only readiness ends the wait early.
	ctx, cancel := context.WithTimeout(ctx, redialWait)
	defer cancel()
	for state := c.conn.GetState(); state != connectivity.Ready; state = c.conn.GetState() {
		if !c.conn.WaitForStateChange(ctx, state) {
			return
		}
	}
}

var serverStreamDesc = &grpc.StreamDesc{ServerStreams: true}

func (c grpcCaller) unary(ctx context.Context, in *connect.Request[frame]) (*upstreamReply, error) {
	if c.h2 != nil {
		if reply, err := c.h2.unary(ctx, c.procedure, in); err != errH2NotTaken { //nolint:errorlint // a sentinel, never wrapped
			return reply, err
		}
		c.h2.left.Add(1)
	}
	c.redialIfDown(ctx)
	md, _ := unaryMetadata.Get().(metadata.MD)
	if md == nil {
		md = metadata.MD{}
	}
	// grpc-go reads the metadata while it opens the call, and keeps none
	// of it: the map serves the next call.
	defer releaseMetadata(md)
	ctx, err := outgoingMetadata(ctx, md, in.Header())
	if err != nil {
		return nil, err
	}
	call := new(unaryCall)
	call.opts = [...]grpc.CallOption{grpc.Header(&call.header), grpc.Trailer(&call.trailer)}
	if err := c.conn.Invoke(ctx, c.procedure, in.Msg, &call.out, call.opts[:]...); err != nil {
		return nil, grpcError(ctx, err, call.trailer)
	}
	call.reply.msg = &call.out
	call.reply.header = metadataHeader(call.header)
	call.reply.trailer = metadataHeader(call.trailer)
	return &call.reply, nil
}

// unaryCall is what grpc-go fills in for a unary call and the reply made
// of it, in one allocation rather than one each.
type unaryCall struct {
	out             frame
	header, trailer metadata.MD
	opts            [2]grpc.CallOption
	reply           upstreamReply
}

// metadataHeader is md as the HTTP headers copyMetadata makes of it, nil
// when md is empty.
func metadataHeader(md metadata.MD) http.Header {
	if len(md) == 0 {
		return nil
	}
	h := make(http.Header, len(md))
	copyMetadata(h, md)
	return h
}

func (c grpcCaller) serverStream(ctx context.Context, in *connect.Request[frame]) (upstreamStream, error) {
	c.redialIfDown(ctx)
	ctx, err := outgoingMetadata(ctx, metadata.MD{}, in.Header())
	if err != nil {
		return nil, err
	}
	stream, err := c.conn.NewStream(ctx, serverStreamDesc, c.procedure)
	if err != nil {
		return nil, grpcError(ctx, err, nil)
	}
	if err := stream.SendMsg(in.Msg); err != nil && !errors.Is(err, io.EOF) {
		return nil, grpcError(ctx, err, nil)
	}
	if err := stream.CloseSend(); err != nil {
		return nil, grpcError(ctx, err, nil)
	}
	return &grpcStream{ctx: ctx, stream: stream}, nil
}

// grpcStream adapts a grpc-go client stream to the forwarder's view of an
// upstream stream, the one connect's client streams also have.
type grpcStream struct {
	ctx     context.Context //nolint:containedctx // the call's, for error classification
	stream  grpc.ClientStream
	msg     frame
	err     error
	header  http.Header
	trailer http.Header
}

func (s *grpcStream) Receive() bool {
	if s.err != nil {
		return false
	}
	s.msg = frame{}
	if err := s.stream.RecvMsg(&s.msg); err != nil {
		if !errors.Is(err, io.EOF) {
			s.err = grpcError(s.ctx, err, s.stream.Trailer())
		}
		return false
	}
	return true
}

func (s *grpcStream) Msg() *frame { return &s.msg }
func (s *grpcStream) Err() error  { return s.err }

func (s *grpcStream) ResponseHeader() http.Header {
	if s.header == nil {
		s.header = make(http.Header)
		md, _ := s.stream.Header()
		copyMetadata(s.header, md)
	}
	return s.header
}

func (s *grpcStream) ResponseTrailer() http.Header {
	if s.trailer == nil {
		s.trailer = make(http.Header)
		copyMetadata(s.trailer, s.stream.Trailer())
	}
	return s.trailer
}

// Close is a no-op: the forwarder ends the call's context when it is done
// with the stream, which releases it in grpc-go.
func (s *grpcStream) Close() error { return nil }

// unaryMetadata holds the emptied metadata maps of finished unary calls.
var unaryMetadata sync.Pool

func releaseMetadata(md metadata.MD) {
	if len(md) <= reusedHeaderNames {
		clear(md)
		unaryMetadata.Put(md)
	}
}

// outgoingMetadata puts the forwarded request headers into the context as
// gRPC metadata, in md. Binary (-bin) values arrive base64-encoded in HTTP
// headers; grpc-go wants them raw and encodes them itself.
func outgoingMetadata(ctx context.Context, md metadata.MD, header http.Header) (context.Context, error) {
	if len(header) == 0 {
		return ctx, nil
	}
	if err := checkMetadata(header); err != nil {
		return nil, err
	}
	for name, vals := range header {
		key := lowerName(name)
		if !strings.HasSuffix(key, "-bin") {
			md[key] = vals
			continue
		}
		decoded := make([]string, len(vals))
		for i, v := range vals {
			raw, _ := connect.DecodeBinaryHeader(v) // checked above
			decoded[i] = string(raw)
		}
		md[key] = decoded
	}
	return metadata.NewOutgoingContext(ctx, md), nil
}

func printableASCII(v string) bool {
	// Eight bytes at a time: every call signed for the backends carries
	// a 300-byte identity token, checked here. In a word of bytes all within
	// 0x20..0x7e, neither x-0x20 nor x+1 borrows or carries across bytes
	// or sets a byte's high bit. The lowest byte outside the range gets no
	// borrow or carry from below and sets its own: below 0x20 in x-0x20,
	// 0x7f to 0xfe in x+1, 0xff in x-0x20.
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(v); i += 8 {
		x := uint64(v[i]) | uint64(v[i+1])<<8 | uint64(v[i+2])<<16 | uint64(v[i+3])<<24 |
			uint64(v[i+4])<<32 | uint64(v[i+5])<<40 | uint64(v[i+6])<<48 | uint64(v[i+7])<<56
		if ((x-0x20*ones)|(x+ones))&highs != 0 {
			return false
		}
	}
	for ; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// copyMetadata copies upstream response metadata into HTTP headers under
// the same rules as [copyResponse], base64-encoding binary values again.
func copyMetadata(dst http.Header, md metadata.MD) {
	metadataToHeader(dst, md, func(name string) bool { return !neverForwarded(name) })
}

// metadataToHeader copies the metadata keep accepts (by canonical name)
// into dst, base64-encoding binary values as HTTP headers carry them.
// Values are shared rather than copied: neither side writes them in place,
// and they are capped so that an append to either side copies.
func metadataToHeader(dst http.Header, md metadata.MD, keep func(name string) bool) {
	for key, vals := range md {
		name := canonicalName(key)
		if len(vals) == 0 || !keep(name) {
			continue
		}
		if strings.HasSuffix(key, "-bin") {
			for _, v := range vals {
				dst[name] = append(dst[name], connect.EncodeBinaryHeader([]byte(v)))
			}
			continue
		}
		if dst[name] == nil {
			dst[name] = vals[:len(vals):len(vals)]
			continue
		}
		dst[name] = append(dst[name], vals...)
	}
}

// grpcError turns what grpc-go returned into the forwarder's terms: an
// error the upstream sent becomes a [wireError] carrying its code, message,
// details and trailers; a failure of the call itself (context, connection,
// transport) becomes a plain connect error of the matching code, which the
// forwarder words without the transport's internals.
func grpcError(ctx context.Context, err error, trailer metadata.MD) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(ctxErr, context.DeadlineExceeded) {
			return connect.NewError(connect.CodeDeadlineExceeded, ctxErr)
		}
		return connect.NewError(connect.CodeCanceled, ctxErr)
	}
	st, ok := status.FromError(err)
	if !ok {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	return statusError(st, metadataHeader(trailer))
}

// statusError is a gRPC status a call ended with, as grpcError returns
// it; trailer is the call's forwarded trailers.
func statusError(st *status.Status, trailer http.Header) error {
	if st.Code() == codes.ResourceExhausted && strings.HasPrefix(st.Message(), "grpc: received message larger than max") {
		// The upstream's answer is larger than the gateway holds: the
		// transcoder words the same limit so for the protocols it buffers.
		return &wireError{apierr.UpstreamTooLarge(apierr.Public("the upstream's response exceeded the gateway's message limit"))}
	}
	if isTransportStatus(st) {
		return connect.NewError(connect.Code(st.Code()), errors.New(st.Message()))
	}
	ce := connect.NewError(connect.Code(st.Code()), errorText(st.Message()))
	for _, detail := range st.Proto().GetDetails() {
		if d, err := connect.NewErrorDetail(detail); err == nil {
			ce.AddDetail(d)
		}
	}
	copyAll(ce.Meta(), trailer)
	return &wireError{ce}
}

// isTransportStatus reports whether grpc-go made a status up for a call
// that failed in the client or on the connection, rather than receiving it
// from the upstream. grpc-go marks neither apart, but words its own
// failures in a few fixed ways.
func isTransportStatus(st *status.Status) bool {
	switch st.Code() {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.Canceled, codes.DeadlineExceeded, codes.ResourceExhausted:
	default:
		return false
	}
	msg := st.Message()
	for _, prefix := range transportMessagePrefixes {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

var transportMessagePrefixes = []string{
	"connection error",
	"error reading from server",
	"transport:",
	"grpc:",
	"closing transport",
	"last connection error",
	"last resolver error",
	"name resolver error",
	"stream terminated by RST_STREAM",
	"unexpected HTTP status code",
	"server closed the stream without sending trailers",
	"context canceled",
	"context deadline exceeded",
}

// wireError is an error to hand the caller as it is: one an upstream sent,
// rebuilt, or the caller's own mistake found while building the call.
type wireError struct{ err *connect.Error }

func (w *wireError) Error() string { return w.err.Error() }
func (w *wireError) Unwrap() error { return w.err }

// frameCodec is grpc-go's side of [passthroughCodec]: frames go out as the
// bytes they hold, without a copy, and come in as what arrived, copied
// only out of grpc-go's pooled buffers.
type frameCodec struct{}

// frameBuffers is what frameCodec hands grpc-go for one outgoing frame.
type frameBuffers struct {
	data  mem.SliceBuffer
	slice [1]mem.Buffer
}

func (frameCodec) Name() string { return "proto" }

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *frame:
		// The slice and the buffer in it in one allocation rather than
		// two: a pointer to a SliceBuffer is a Buffer too, and the pair
		// lives as long as grpc-go holds the slice.
		out := new(frameBuffers)
		out.data = m.data
		out.slice[0] = &out.data
		return out.slice[:], nil
	case proto.Message:
		// The gateway's own services on the grpc-go path (health,
		// reflection) speak real messages.
		data, err := proto.Marshal(m)
		return mem.BufferSlice{mem.SliceBuffer(data)}, err
	}
	return nil, fmt.Errorf("frame codec: cannot marshal %T", v)
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *frame:
		if len(data) == 1 {
			if b, ok := data[0].(mem.SliceBuffer); ok {
				// A message that arrived in one small buffer is kept as it
				// is: grpc-go allocated that buffer for this read alone and
				// never reuses it (only its pooled buffers are recycled,
				// and those are copied below).
				m.data = b
				return nil
			}
		}
		m.data = data.Materialize()
		return nil
	case proto.Message:
		return proto.Unmarshal(data.Materialize(), m)
	}
	return fmt.Errorf("frame codec: cannot unmarshal into %T", v)
}
