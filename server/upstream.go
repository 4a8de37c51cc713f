package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Upstream protocols a gateway may speak to a backend.
const (
	ProtocolGRPC    = "grpc"
	ProtocolConnect = "connect"
	ProtocolGRPCWeb = "grpcweb"
)

// Upstream is where one backend service is reached.
type Upstream struct {
	// Address is host:port (cleartext HTTP/2), or a URL: http://host:port
	// for cleartext HTTP/2, https://host:port for HTTP/2 over TLS. Several
	// of them separated by commas are replicas of the backend, and so are
	// the addresses dns:///host:port resolves to, resolved again every
	// Config.ResolveInterval; calls are balanced across the replicas.
	Address string
	// Protocol is grpc (the default), connect or grpcweb.
	Protocol string
}

// baseURL validates the address and returns the URL calls are made to.
func (u Upstream) baseURL() (*url.URL, error) {
	addr := strings.TrimSpace(u.Address)
	if addr == "" {
		return nil, fmt.Errorf("no address")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	parsed, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", u.Address, err)
	}
	if parsed.Scheme != "http" && parsed.Scheme != "https" {
		return nil, fmt.Errorf("address %q: scheme must be http or https", u.Address)
	}
	if parsed.Host == "" {
		return nil, fmt.Errorf("address %q: no host", u.Address)
	}
	if _, port, err := net.SplitHostPort(parsed.Host); err != nil || port == "" {
		return nil, fmt.Errorf("address %q: want host:port", u.Address)
	}
	parsed.Path = strings.TrimSuffix(parsed.Path, "/")
	return parsed, nil
}

// speaksGRPC reports whether calls to the upstream use the gRPC protocol.
func (u Upstream) speaksGRPC() bool { return u.Protocol == "" || u.Protocol == ProtocolGRPC }

func (u Upstream) clientOptions() ([]connect.ClientOption, error) {
	opts := []connect.ClientOption{
		connect.WithCodec(passthroughCodec{}),
		// Compressing between the gateway and its backends costs CPU on
		// both sides of every call to save bandwidth a data center has:
		// the gateway asks for plain responses.
		connect.WithAcceptCompression("gzip", nil, nil),
	}
	switch u.Protocol {
	case "", ProtocolGRPC:
		opts = append(opts, connect.WithGRPC())
	case ProtocolGRPCWeb:
		opts = append(opts, connect.WithGRPCWeb())
	case ProtocolConnect:
	default:
		return nil, fmt.Errorf("protocol %q: want grpc, connect or grpcweb", u.Protocol)
	}
	return opts, nil
}

// newUpstreamClient returns the HTTP client of one upstream: HTTP/2 only, so
// that every call shares a few long-lived multiplexed connections. An h2c
// transport that also allowed HTTP/1.1 would fall back to it, one
// connection per concurrent call.
func newUpstreamClient(base *url.URL, dialTimeout time.Duration) *http.Client {
	protocols := new(http.Protocols)
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: dialTimeout,
		HTTP2: &http.HTTP2Config{
			// Notice a dead upstream connection instead of waiting on it.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     10 * time.Second,
		},
	}
	if base.Scheme == "https" {
		protocols.SetHTTP2(true)
		transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	transport.Protocols = protocols
	return &http.Client{Transport: transport}
}

// upstreamService is one backend service and the handlers forwarding to it.
type upstreamService struct {
	name       string
	descriptor protoreflect.ServiceDescriptor
	// pool is the service's replicas, each with its connection, in-flight
	// limit and outlier detection.
	pool  *replicaPool
	stats *upstreamStats
}

// buildService returns the transcoder's view of the forwarding Connect
// handlers of one upstream service's methods. The streaming methods'
// forwarders are also added to streams, for in-process callers.
func (g *Gateway) buildService(svc upstreamService, hooks map[string]methodHooks, handlerOpts []connect.HandlerOption, streams map[string]connect.StreamingHandlerFunc) (*vanguard.Service, error) {
	mux := http.NewServeMux()
	methods := svc.descriptor.Methods()
	for i := range methods.Len() {
		method := methods.Get(i)
		procedure := procedureOf(svc.descriptor, method)
		fwd := &forwarder{
			upstream:   svc.name,
			procedure:  procedure,
			method:     i,
			pool:       svc.pool,
			stats:      svc.stats,
			idempotent: idempotent(method),
			attempts:   g.cfg.RetryAttempts,
			headers:    g.headers,
			maxTimeout: g.cfg.MaxTimeout,
			logger:     g.logger,
			hooks:      hooks[procedure],
			shutdown:   g.streams,
			tracing:    g.tracing,
		}
		opts := append([]connect.HandlerOption{
			connect.WithSchema(method),
			connect.WithCodec(passthroughCodec{}),
			// The forwarders neither take nor send compressed messages: the
			// transcoder decompresses what a caller compressed, and the
			// gateway answers uncompressed. The transcoder cannot mix the
			// two (it marks every message of a response compressed once
			// the response names an encoding), and compressing each message
			// cost more CPU than the rest of the gateway's work on it.
			connect.WithCompression("gzip", nil, nil),
		}, handlerOpts...)
		switch {
		case method.IsStreamingClient():
			return nil, fmt.Errorf("method %s: client streams are not forwarded", method.FullName())
		case method.IsStreamingServer():
			if fwd.hooks.request != nil {
				return nil, fmt.Errorf("method %s: request hooks apply to unary methods only", method.FullName())
			}
			mux.Handle(procedure, connect.NewServerStreamHandler(procedure, fwd.serverStream, opts...))
			streams[procedure] = fwd.streamingHandler
			if g.fast != nil {
				g.fast.add(procedure, method, g.chain, fwd.streamingHandler)
			}
		default:
			mux.Handle(procedure, connect.NewUnaryHandler(procedure, fwd.unary, opts...))
			if g.fast != nil {
				g.fast.add(procedure, method, g.chain, fwd.unaryConn)
			}
			if g.rest != nil && fwd.hooks.request == nil {
				g.rest.add(procedure, method, g.chain, fwd.unaryConn)
			}
		}
	}
	return vanguard.NewServiceWithSchema(svc.descriptor, mux,
		// The forwarders take gRPC with binary protobuf only: gRPC callers
		// pass straight through, the transcoder re-frames Connect and
		// gRPC-Web and turns JSON and REST into protobuf. A gRPC handler
		// also refuses a request the transcoder failed to translate (no
		// message at all), which a Connect unary handler would take for
		// an empty message and forward.
		vanguard.WithTargetProtocols(vanguard.ProtocolGRPC),
		vanguard.WithTargetCodecs(vanguard.CodecProto),
		vanguard.WithNoTargetCompression(),
	), nil
}

// upstreamCaller makes the calls of one upstream method: over grpc-go for
// gRPC upstreams, over connect-go for Connect and gRPC-Web ones. Responses
// and errors come back already stripped of what must not cross the gateway.
type upstreamCaller interface {
	unary(ctx context.Context, in *connect.Request[frame]) (*upstreamReply, error)
	serverStream(ctx context.Context, in *connect.Request[frame]) (upstreamStream, error)
}

// upstreamStream is the forwarder's view of an upstream server stream;
// connect's client streams have this shape.
type upstreamStream interface {
	Receive() bool
	Msg() *frame
	Err() error
	ResponseHeader() http.Header
	ResponseTrailer() http.Header
	Close() error
}

// connectCaller calls one method of an upstream with connect-go.
type connectCaller struct {
	client *connect.Client[frame, frame]
}

func (c connectCaller) unary(ctx context.Context, in *connect.Request[frame]) (*upstreamReply, error) {
	res, err := c.client.CallUnary(ctx, in)
	if err != nil {
		return nil, err
	}
	reply := &upstreamReply{msg: res.Msg, header: http.Header{}, trailer: http.Header{}}
	copyResponse(reply.header, res.Header())
	copyResponse(reply.trailer, res.Trailer())
	return reply, nil
}

// upstreamReply is the answer to a unary call: its message, and the
// headers and trailers to forward, nil when there are none. It is not a
// connect.Response, whose header maps would be made on every call for
// callers on the connection path that have maps of their own.
type upstreamReply struct {
	msg             *frame
	header, trailer http.Header
}

// response is the reply as a Connect handler returns it.
func (r *upstreamReply) response() *connect.Response[frame] {
	res := connect.NewResponse(r.msg)
	copyAll(res.Header(), r.header)
	copyAll(res.Trailer(), r.trailer)
	return res
}

func (c connectCaller) serverStream(ctx context.Context, in *connect.Request[frame]) (upstreamStream, error) {
	return c.client.CallServerStream(ctx, in)
}
