package server

import (
	"context"
	"errors"
	"math"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// grpcFast serves gRPC callers' connections with grpc-go instead of
// net/http (see connSplitter). Every call still passes the gateway's one
// policy: the same Connect interceptors (access log, authentication,
// authorization, rate limits) run around the same forwarders, through an
// adapter that gives a grpc-go stream the shape of a Connect handler
// connection; identity headers are stripped, request ids minted and client
// addresses resolved as the HTTP middleware does for other callers.
type grpcFast struct {
	methods  map[string]fastMethod
	security *security
	server   *grpc.Server
	served   atomic.Int64 // calls, for tests
	active   atomic.Int64 // calls in flight, for shutdown
	// conns are the connections grpc-go serves, by remote address, so that
	// a call can cut its own when its caller stalls (see fastConn.timed).
	conns sync.Map
}

// fastMethod is one procedure the fast path serves: its spec and its
// handler, already wrapped in the interceptors.
type fastMethod struct {
	spec    connect.Spec
	handler connect.StreamingHandlerFunc
}

func newGRPCFast(sec *security, maxRecv int) *grpcFast {
	f := &grpcFast{methods: map[string]fastMethod{}, security: sec}
	cfg := sec.cfg
	f.server = grpc.NewServer(
		grpc.UnknownServiceHandler(f.serve),
		grpc.ForceServerCodecV2(frameCodec{}),
		grpc.MaxRecvMsgSize(int(cfg.MaxBodyBytes)),
		grpc.MaxSendMsgSize(maxRecv),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(uint32(min(cfg.MaxHeaderBytes, math.MaxUint32))), //nolint:gosec // bounded
		grpc.ConnectionTimeout(cfg.ReadHeaderTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: cfg.IdleTimeout}),
		// Callers' keepalive pings are welcome at the rate net/http took them.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.SharedWriteBuffer(true),
		// Calls run on long-lived workers whose stacks have grown to what a
		// call needs, instead of a new goroutine growing its stack each time.
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.InTapHandle(keepMetadata),
	)
	return f
}

// receivedMetadataKey is the context key of a call's metadata as grpc-go
// received it.
type receivedMetadataKey struct{}

// keepMetadata hands a call the metadata grpc-go received, which the call
// converts to HTTP headers. metadata.FromIncomingContext would copy every
// key's values first, only for them to be converted.
func keepMetadata(ctx context.Context, info *tap.Info) (context.Context, error) {
	return context.WithValue(ctx, receivedMetadataKey{}, info.Header), nil
}

// receivedMetadata is the metadata a call received. grpc-go writes none of
// it once the call has started, and the call writes none: its headers
// share the values, which are never written in place.
func receivedMetadata(ctx context.Context) metadata.MD {
	if md, ok := ctx.Value(receivedMetadataKey{}).(metadata.MD); ok {
		return md
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return md
}

// streamWorkers is how many calls the grpc-go server runs on long-lived
// workers. A forwarded call holds its worker while it waits on the
// upstream, so a worker serves one call in flight; a call that finds every
// worker busy gets a new goroutine, which grows its stack from 2 KiB to
// what a call needs (about a sixth of a call's CPU, profiled at 32 calls in
// flight with 4 workers). Idle workers keep their stacks, tens of KiB
// each: 128 cost a few MiB at most.
func streamWorkers() uint32 {
	return uint32(max(128, 32*runtime.GOMAXPROCS(0))) //nolint:gosec // small
}

// add serves procedure with handler wrapped in chain.
func (f *grpcFast) add(procedure string, method protoreflect.MethodDescriptor, chain []connect.Interceptor, handler connect.StreamingHandlerFunc) {
	f.methods[procedure] = fastMethod{spec: methodSpec(procedure, method), handler: wrapChain(chain, handler)}
}

// wrapChain wraps handler in chain, first interceptor outermost, as
// connect applies them.
func wrapChain(chain []connect.Interceptor, handler connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	for i := len(chain) - 1; i >= 0; i-- {
		handler = chain[i].WrapStreamingHandler(handler)
	}
	return handler
}

// methodSpec is the spec connect gives a handler of method.
func methodSpec(procedure string, method protoreflect.MethodDescriptor) connect.Spec {
	streamType := connect.StreamTypeUnary
	switch {
	case method.IsStreamingClient() && method.IsStreamingServer():
		streamType = connect.StreamTypeBidi
	case method.IsStreamingServer():
		streamType = connect.StreamTypeServer
	case method.IsStreamingClient():
		streamType = connect.StreamTypeClient
	}
	return connect.Spec{Procedure: procedure, StreamType: streamType, Schema: method, IdempotencyLevel: connect.IdempotencyLevel(method.Options().ProtoReflect().Get(idempotencyField(method)).Enum())}
}

// asFastConn finds the grpc-go stream under the wrappers interceptors put
// around a connection (the metrics' measuredConn).
func asFastConn(conn connect.StreamingHandlerConn) (*fastConn, bool) {
	for {
		switch c := conn.(type) {
		case *fastConn:
			return c, true
		case interface {
			Unwrap() connect.StreamingHandlerConn
		}:
			conn = c.Unwrap()
		default:
			return nil, false
		}
	}
}

// idempotencyField is the idempotency_level field of a method's options.
func idempotencyField(method protoreflect.MethodDescriptor) protoreflect.FieldDescriptor {
	return method.Options().ProtoReflect().Descriptor().Fields().ByName("idempotency_level")
}

// serve handles every call on a gRPC caller's connection.
func (f *grpcFast) serve(_ any, stream grpc.ServerStream) error {
	f.served.Add(1)
	f.active.Add(1)
	defer f.active.Add(-1)
	procedure, _ := grpc.MethodFromServerStream(stream)
	m, ok := f.methods[procedure]
	if !ok {
		return status.Error(codes.Unimplemented, "no route for POST "+procedure)
	}
	ctx := stream.Context()
	conn := newFastConn(stream, m.spec)
	conn.fast = f
	ensureRequestID(conn.reqHeader, conn.header)
	err := m.handler(f.security.edge(ctx, conn.peer.Addr, conn.reqHeader), conn)
	conn.flushHeader()
	if err != nil {
		err = conn.fail(err)
	} else {
		conn.setTrailer(conn.trailer)
	}
	conn.release()
	return err
}

// notPseudoHeader keeps the request's headers, not HTTP/2's pseudo-headers
// (":authority"), which grpc-go leaves in the metadata.
func notPseudoHeader(name string) bool { return !strings.HasPrefix(name, ":") }

// fastConn is a grpc-go server stream as a Connect handler connection.
type fastConn struct {
	stream     grpc.ServerStream
	spec       connect.Spec
	peer       connect.Peer
	reqHeader  http.Header
	header     http.Header
	trailer    http.Header
	headerSent bool
	// fast serves the call: its limits, and the connection to cut when
	// the caller stalls. The body read timeout bounds waiting for the
	// request message, the write timeout one response write; past either
	// the caller's connection is cut: grpc-go gives a handler no way to
	// reset one stream, and a caller that sends or reads nothing for that
	// long is not using the others either.
	fast  *grpcFast
	timer *time.Timer
	// fired is set once the timer's cut has started: it reads the struct,
	// which is then never reused.
	fired bool
	// md is the map the call's headers and trailers are handed to grpc-go in.
	md metadata.MD
	// received and sent count message bytes, for the metrics; queued
	// bounds what the call has handed grpc-go to send (see Send).
	received, sent, queued int
}

// fastConns holds the state of finished calls for new ones: the struct,
// its header maps (cleared, their storage kept) and its timer, which a
// call would otherwise allocate afresh.
var fastConns sync.Pool

// reusedHeaderNames is the most names a header map may have held and
// still be kept for another call.
const reusedHeaderNames = 32

func newFastConn(stream grpc.ServerStream, spec connect.Spec) *fastConn {
	c, _ := fastConns.Get().(*fastConn)
	if c == nil {
		c = new(fastConn)
	}
	if c.header == nil {
		c.header = http.Header{}
	}
	if c.trailer == nil {
		c.trailer = http.Header{}
	}
	c.stream, c.spec = stream, spec
	c.peer.Protocol = connect.ProtocolGRPC
	if p, ok := peer.FromContext(stream.Context()); ok && p.Addr != nil {
		c.peer.Addr = p.Addr.String()
	}
	md := receivedMetadata(stream.Context())
	if c.reqHeader == nil {
		c.reqHeader = make(http.Header, len(md))
	}
	metadataToHeader(c.reqHeader, md, notPseudoHeader)
	return c
}

// release keeps c for another call, once nothing of this call reads it:
// grpc-go took copies of what it sends, and the handler has returned.
func (c *fastConn) release() {
	if c.fired {
		return
	}
	keep := fastConn{timer: c.timer, reqHeader: reusable(c.reqHeader), header: reusable(c.header), trailer: reusable(c.trailer)}
	if len(c.md) <= reusedHeaderNames {
		keep.md = c.md
	}
	*c = keep
	fastConns.Put(c)
}

// reusable is h emptied for another call, or nil if it grew too large to
// keep.
func reusable(h http.Header) http.Header {
	if len(h) > reusedHeaderNames {
		return nil
	}
	clear(h)
	return h
}

func (c *fastConn) messageBytes() (int, bool, int) { return c.received, c.received > 0, c.sent }

func (c *fastConn) Spec() connect.Spec           { return c.spec }
func (c *fastConn) Peer() connect.Peer           { return c.peer }
func (c *fastConn) RequestHeader() http.Header   { return c.reqHeader }
func (c *fastConn) ResponseHeader() http.Header  { return c.header }
func (c *fastConn) ResponseTrailer() http.Header { return c.trailer }

// Receive reads the request. A message over the limit is answered by
// grpc-go itself, in its words ("grpc: received message larger than
// max"), before the handler could word it.
func (c *fastConn) Receive(msg any) error {
	if err := c.timed(c.fast.security.cfg.BodyReadTimeout, func() error { return c.stream.RecvMsg(msg) }); err != nil {
		return fastError(err)
	}
	if f, ok := msg.(*frame); ok {
		c.received += len(f.data)
	}
	return nil
}

func (c *fastConn) Send(msg any) error {
	c.flushHeader()
	timeout := c.fast.security.cfg.WriteTimeout
	f, isFrame := msg.(*frame)
	if isFrame && c.queued < sendQuota {
		// grpc-go queues a message without waiting while the stream has
		// quota left, and every stream starts with sendQuota: what the call
		// queued so far is less, so this write cannot wait on the caller
		// (a unary response never does), and arming the timer for it is
		// wasted.
		timeout = 0
	}
	if err := c.timed(timeout, func() error { return c.stream.SendMsg(msg) }); err != nil {
		return fastError(err)
	}
	if isFrame {
		c.sent += len(f.data)
		c.queued += len(f.data) + messageOverhead
		if len(f.data) > sendQuota && c.fast.security.cfg.WriteTimeout > 0 {
			c.watchDelivery(int64(len(f.data)), c.fast.security.cfg.WriteTimeout)
		}
	}
	return nil
}

// sendQuota is what grpc-go takes of a stream's response before SendMsg
// waits for the caller (its defaultWriteQuota): a larger message is queued
// whole, so SendMsg returning says nothing of its delivery.
const sendQuota = 64 << 10

// messageOverhead bounds what grpc-go counts against the quota for a
// message beyond its bytes: the 5-byte prefix, and what compression adds
// to a message that does not compress (a caller that asks for compressed
// responses gets them).
const messageOverhead = 64

// timed runs op, cutting the caller's connection if op is still waiting on
// the caller after d.
func (c *fastConn) timed(d time.Duration, op func() error) error {
	if d <= 0 || c.fast == nil {
		return op()
	}
	// One timer a call, armed for each wait: a call's reads and writes come
	// one after another.
	if c.timer == nil {
		c.timer = time.AfterFunc(d, c.cut)
	} else {
		c.timer.Reset(d)
	}
	err := op()
	if !c.timer.Stop() {
		c.fired = true
	}
	return err
}

// flushHeader hands the response headers to grpc-go, which sends them with
// the first message or the status.
func (c *fastConn) flushHeader() {
	if c.headerSent {
		return
	}
	c.headerSent = true
	if md := c.metadata(c.header); len(md) > 0 {
		_ = c.stream.SetHeader(md)
	}
}

func (c *fastConn) setTrailer(h http.Header) {
	if md := c.metadata(h); len(md) > 0 {
		c.stream.SetTrailer(md)
	}
}

// metadata is h as the metadata grpc-go sends, in a map the call reuses:
// grpc-go copies what it is given to send.
func (c *fastConn) metadata(h http.Header) metadata.MD {
	if len(h) == 0 {
		return nil
	}
	if c.md == nil {
		c.md = make(metadata.MD, len(h))
	} else {
		clear(c.md)
	}
	headerMetadata(c.md, h)
	return c.md
}

// fail turns a handler's error into the status grpc-go sends: code,
// message and details as the caller would get them from the gateway's
// other gRPC path, and the error's metadata as trailers.
func (c *fastConn) fail(err error) error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return status.Error(codes.Unknown, err.Error())
	}
	trailer := c.trailer
	for name, vals := range ce.Meta() {
		trailer[name] = append(trailer[name], vals...)
	}
	c.setTrailer(trailer)
	st := &spb.Status{Code: int32(ce.Code()), Message: ce.Message()} //nolint:gosec // codes are small
	for _, d := range ce.Details() {
		st.Details = append(st.Details, &anypb.Any{TypeUrl: "type.googleapis.com/" + d.Type(), Value: d.Bytes()})
	}
	return status.FromProto(st).Err()
}

// fastError gives stream errors the Connect form the forwarders expect.
func fastError(err error) error {
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	if st, ok := status.FromError(err); ok {
		return connect.NewError(connect.Code(st.Code()), errors.New(st.Message()))
	}
	return err
}

// headerMetadata adds h to md as gRPC metadata, leaving out what grpc-go writes
// itself and the status a forwarder asks of the REST layer, which these
// calls do not pass (see restWriter.decide); binary values are decoded for
// grpc-go to encode.
func headerMetadata(md metadata.MD, h http.Header) {
	for name, vals := range h {
		if len(vals) == 0 || neverForwarded(name) && name != "Grpc-Status-Details-Bin" || name == statusHeader {
			continue
		}
		key := lowerName(name)
		if strings.HasPrefix(key, "grpc-") {
			continue
		}
		if strings.HasSuffix(key, "-bin") {
			for _, v := range vals {
				if raw, err := connect.DecodeBinaryHeader(v); err == nil {
					md[key] = append(md[key], string(raw))
				}
			}
			continue
		}
		if md[key] == nil {
			// grpc-go only reads what it is given.
			md[key] = vals
			continue
		}
		md[key] = append(md[key], vals...)
	}
}

// health serves grpc.health.v1.Health/Check from the gateway's checker;
// Watch is not offered, as on the gateway's other gRPC path.
func (f *grpcFast) addHealth(checker *healthChecker, chain []connect.Interceptor) {
	check := healthpb.File_grpc_health_v1_health_proto.Services().Get(0).Methods().ByName("Check")
	f.add(healthpb.Health_Check_FullMethodName, check, chain, func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		var req healthpb.HealthCheckRequest
		if err := conn.Receive(&req); err != nil {
			return err
		}
		res, err := checker.Check(ctx, &grpchealth.CheckRequest{Service: req.GetService()})
		if err != nil {
			return err
		}
		return conn.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_ServingStatus(res.Status)}) //nolint:gosec // same enum
	})
}

// addReflection serves server reflection, v1 and v1alpha, listing names.
func (f *grpcFast) addReflection(names []string, chain []connect.Interceptor) {
	opts := reflection.ServerOptions{Services: serviceNames(names)}
	v1 := reflection.NewServerV1(opts)
	v1alpha := reflection.NewServer(opts)
	for _, svc := range []protoreflect.ServiceDescriptor{
		reflectionv1.File_grpc_reflection_v1_reflection_proto.Services().Get(0),
		reflectionv1alpha.File_grpc_reflection_v1alpha_reflection_proto.Services().Get(0),
	} {
		method := svc.Methods().Get(0)
		procedure := "/" + string(svc.FullName()) + "/" + string(method.Name())
		alpha := strings.Contains(procedure, "v1alpha")
		f.add(procedure, method, chain, func(_ context.Context, conn connect.StreamingHandlerConn) error {
			fc, ok := asFastConn(conn)
			if !ok {
				return connect.NewError(connect.CodeInternal, errors.New("reflection: unexpected connection"))
			}
			stream := fc.stream
			var err error
			if alpha {
				err = v1alpha.ServerReflectionInfo(&grpc.GenericServerStream[reflectionv1alpha.ServerReflectionRequest, reflectionv1alpha.ServerReflectionResponse]{ServerStream: stream})
			} else {
				err = v1.ServerReflectionInfo(&grpc.GenericServerStream[reflectionv1.ServerReflectionRequest, reflectionv1.ServerReflectionResponse]{ServerStream: stream})
			}
			if err != nil {
				// A caller ending its stream is canceled, not unknown, in the
				// access log as on the other path.
				return fastError(err)
			}
			return nil
		})
	}
}

// serviceNames lists services for reflection.
type serviceNames []string

func (s serviceNames) GetServiceInfo() map[string]grpc.ServiceInfo {
	m := make(map[string]grpc.ServiceInfo, len(s))
	for _, name := range s {
		m[name] = grpc.ServiceInfo{}
	}
	return m
}

// cut closes the caller's connection.
func (c *fastConn) cut() {
	if tc, ok := c.fast.conns.Load(c.peer.Addr); ok {
		_ = tc.(net.Conn).Close()
	}
}

// watchDelivery follows the delivery of size bytes just queued on the
// caller's connection, and cuts the connection if it writes nothing for
// timeout before they could have gone out: its caller stopped reading, and
// would otherwise hold the message in the gateway's memory. Bytes of other
// calls count as delivery too, so a busy connection is never cut by
// mistake.
func (c *fastConn) watchDelivery(size int64, timeout time.Duration) {
	v, ok := c.fast.conns.Load(c.peer.Addr)
	if !ok {
		return
	}
	tc := v.(*trackedConn)
	last := tc.written.Load()
	target := last + size
	var check func()
	check = func() {
		switch written := tc.written.Load(); {
		case written >= target:
		case written == last:
			_ = tc.Close()
		default:
			last = written
			time.AfterFunc(timeout, check)
		}
	}
	time.AfterFunc(timeout, check)
}

// trackedListener records the connections it accepts in conns.
type trackedListener struct {
	net.Listener
	conns *sync.Map
}

func (l trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	addr := &remoteAddr{Addr: c.RemoteAddr(), text: c.RemoteAddr().String()}
	tc := &trackedConn{Conn: c, addr: addr, conns: l.conns}
	l.conns.Store(addr.text, tc)
	return tc, nil
}

type trackedConn struct {
	net.Conn
	addr    *remoteAddr
	conns   *sync.Map
	once    sync.Once
	written atomic.Int64
}

// remoteAddr is a connection's address with its text kept: grpc-go gives
// each call the connection's address, which every call would format again.
type remoteAddr struct {
	net.Addr
	text string
}

func (a *remoteAddr) String() string { return a.text }

func (c *trackedConn) RemoteAddr() net.Addr { return c.addr }

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.conns.Delete(c.RemoteAddr().String()) })
	return c.Conn.Close()
}

// serve runs the grpc-go server on the connections ln delivers.
func (f *grpcFast) serveOn(ln net.Listener) error {
	err := f.server.Serve(trackedListener{Listener: ln, conns: &f.conns})
	if errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// stop lets calls in flight finish until ctx ends, then cuts them and
// says how many it cut. A gateway without the grpc-go path has none.
func (f *grpcFast) stop(ctx context.Context) int {
	if f == nil {
		return 0
	}
	done := make(chan struct{})
	go func() {
		f.server.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case <-ctx.Done():
		cut := int(f.active.Load())
		f.server.Stop()
		<-done
		return cut
	}
}
