// Package server assembles the Flowgate gateway: one HTTP handler that
// serves REST, Connect, gRPC and gRPC-Web for the three workflow services
// by transcoding every caller's protocol onto forwarding Connect handlers,
// plus health probes, Prometheus metrics, server reflection, API docs and
// the Server-Sent-Events routes. [New] builds a [Gateway] from a
// [Config]; [Gateway.Serve] runs it on a listener until its context ends,
// then drains.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/vanguard"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	// Error details must be linked in for the transcoder to render them.
	_ "google.golang.org/genproto/googleapis/rpc/errdetails"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/sse"
)

// Config is everything a gateway needs; cmd/flowgate fills it from flags
// and the environment.
type Config struct {
	// Agent, Runtime and Engine are the three upstream services.
	Agent, Runtime, Engine Upstream
	// MaxTimeout caps the deadline a caller may ask for, and is the deadline
	// of unary calls that ask for none. Zero means no cap.
	MaxTimeout time.Duration
	// DialTimeout bounds connecting to an upstream (default 5s), so that an
	// unreachable upstream is an error, not a hang.
	DialTimeout time.Duration
	// MaxInFlight caps the unary calls in flight to each upstream (default
	// 1024); calls over it fail at once with Unavailable.
	MaxInFlight int
	// RetryAttempts bounds the tries of one call, retries included
	// (default 3; 1 never retries). Calls are retried when the upstream
	// certainly did not get them, and calls of idempotent methods also when
	// they failed in transport; see the README's "Many replicas".
	RetryAttempts int
	// RetryBudget caps an upstream's retries at this share of its calls of
	// the last ten seconds, plus ten (default 0.2).
	RetryBudget float64
	// ResolveInterval is how often a dns:/// upstream address is resolved
	// again (default 10s).
	ResolveInterval time.Duration
	// lookupHost replaces DNS lookups, for tests.
	lookupHost func(ctx context.Context, host string) ([]string, error)
	// ForwardHeaders are request headers forwarded to upstreams in addition
	// to the defaults (request id, trace context, idempotency key, the
	// gateway's identity headers).
	ForwardHeaders []string
	// SSE configures the Server-Sent-Events routes.
	SSE SSEConfig
	// Security configures authentication, authorization, rate limits, CORS
	// and request limits.
	Security SecurityConfig
	// TLSCertFile and TLSKeyFile, when both set, serve TLS with HTTP/2 by
	// ALPN instead of cleartext HTTP/1.1 and HTTP/2.
	TLSCertFile, TLSKeyFile string
	// TranscodeREST serves every REST call through the transcoder,
	// instead of serving the POSTs of a whole JSON body to routes without
	// path variables directly (see restFast). The direct path costs about
	// a quarter less of the gateway's CPU in handling a call; this is the
	// way back.
	TranscodeREST bool
	// NetHTTP1 serves every HTTP/1.1 connection with net/http, instead of
	// with the gateway's own HTTP/1.1 loop for as long as a connection's
	// requests are ones the loop takes on (see h1Fast), which costs a
	// fifth less CPU per REST call; this is the way back.
	NetHTTP1 bool
	// NetHTTPGRPC serves gRPC callers with net/http, as every other caller,
	// instead of with grpc-go on connections whose first request is gRPC.
	// grpc-go costs a third of the CPU per call; this is the way back.
	NetHTTPGRPC bool
	// UpstreamGRPCGo makes every call to a gRPC upstream with grpc-go's
	// client, instead of making the unary calls it can with the gateway's
	// own HTTP/2 client (see h2Client), which costs about a third less of
	// the gateway's CPU per call; this is the way back.
	UpstreamGRPCGo bool
	// ShutdownTimeout bounds draining in-flight calls (default 15s).
	ShutdownTimeout time.Duration
	// DrainDelay keeps the gateway serving this long after shutdown began,
	// with /readyz answering 503, so that load balancers stop sending it
	// calls before it stops accepting them. Zero stops accepting at once.
	DrainDelay time.Duration
	// NoMetrics leaves /metrics out of the routes.
	NoMetrics bool
	// NoConsole leaves the web console (at / and /console/) out of the
	// routes.
	NoConsole bool
	// Version is reported by the health endpoints.
	Version string
	// TracerProvider records a span for every call (a server span, and a
	// client span for its upstream call) and propagates W3C trace context
	// to the upstreams; nil records none.
	TracerProvider trace.TracerProvider
	// Logger receives the access log and operational messages; nil
	// discards them.
	Logger *slog.Logger
}

// Gateway is a configured gateway, ready to serve.
type Gateway struct {
	cfg     Config
	logger  *slog.Logger
	headers headerPolicy
	handler http.Handler
	pools   []*replicaPool
	// chain is the interceptors every call passes, in order.
	chain []connect.Interceptor
	// tracing records spans; nil when off.
	tracing *interceptors.Tracing
	// fast serves gRPC callers' connections with grpc-go; nil when off.
	fast *grpcFast
	// rest serves the commonest REST calls without the transcoder; nil
	// when off.
	rest *restFast
	// h1 is the HTTP/1.1 loop of the last Serve; nil when off.
	h1          atomic.Pointer[h1Fast]
	metrics     *metrics
	health      *healthChecker
	security    *security
	bridges     []*sse.Bridge
	tlsConfig   *tls.Config
	stopStreams context.CancelFunc
	// streams ends when the gateway shuts down: open server streams end
	// then, so that draining does not wait on streams that never end;
	// clients reconnect to another instance.
	streams context.Context //nolint:containedctx // a lifetime, not a request scope
}

// services lists the three upstream services with their descriptors.
func services() []struct {
	name string
	desc protoreflect.ServiceDescriptor
} {
	return []struct {
		name string
		desc protoreflect.ServiceDescriptor
	}{
		{"workflow agent", agentv1.File_workflow_agent_v1_agent_proto.Services().Get(0)},
		{"workflow runtime", runtimev1.File_workflow_runtime_v1_runtime_proto.Services().Get(0)},
		{"workflow engine", enginev1.File_workflow_engine_v1_engine_proto.Services().Get(0)},
	}
}

// New validates cfg and builds a gateway.
func New(cfg Config) (*Gateway, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.RetryAttempts < 0 || cfg.RetryBudget < 0 || cfg.RetryBudget > 1 || cfg.ResolveInterval < 0 {
		return nil, fmt.Errorf("retry attempts (%d) and resolve interval (%s) must not be negative, the retry budget (%g) within 0..1",
			cfg.RetryAttempts, cfg.ResolveInterval, cfg.RetryBudget)
	}
	if cfg.RetryAttempts == 0 {
		cfg.RetryAttempts = defaultRetryAttempts
	}
	if cfg.RetryBudget == 0 {
		cfg.RetryBudget = defaultRetryBudget
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, logger: logger, headers: newHeaderPolicy(cfg.ForwardHeaders)}
	g.streams, g.stopStreams = context.WithCancel(context.Background())
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("could not load TLS certificate %q: %w", cfg.TLSCertFile, err)
		}
		g.tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	descs := make([]protoreflect.ServiceDescriptor, 0, 3)
	for _, svc := range services() {
		descs = append(descs, svc.desc)
	}
	sec, err := newSecurity(cfg.Security, descs, logger)
	if err != nil {
		return nil, err
	}
	g.security = sec
	if g.headers, err = sec.withBackendTokens(g.headers); err != nil {
		return nil, err
	}
	handler, err := g.buildHandler()
	if err != nil {
		_ = g.Close()
		return nil, err
	}
	g.handler = handler
	return g, nil
}

// buildHandler assembles the routes and the middleware around them.
func (g *Gateway) buildHandler() (http.Handler, error) {
	access := interceptors.NewAccessLog(g.logger)
	g.metrics = newMetrics(knownProcedures())
	g.security.authFailed = g.metrics.authFails.WithLabelValues(codeLabel(connect.CodeUnauthenticated)).Inc
	g.security.connRefused = g.metrics.refusals.WithLabelValues("conn_limit").Inc
	chain := append([]connect.Interceptor{access.Interceptor(), restTraceInterceptor(), g.metrics.interceptor()},
		g.metrics.watchRefusals(g.security.interceptors())...)
	if g.tracing = interceptors.NewTracing(g.cfg.TracerProvider); g.tracing != nil {
		// Outermost, so that calls refused by authentication or rate
		// limits have their spans too.
		chain = append([]connect.Interceptor{g.tracing}, chain...)
	}
	g.chain = chain
	if !g.cfg.NetHTTPGRPC {
		g.fast = newGRPCFast(g.security, g.security.maxMessageBytes())
	}
	if !g.cfg.TranscodeREST {
		g.rest = newRESTFast(min(g.security.maxMessageBytes(), int(g.security.cfg.MaxBodyBytes)), g.security.maxMessageBytes())
	}
	handlerOpts := append([]connect.HandlerOption{connect.WithInterceptors(chain...)}, g.security.handlerOptions()...)
	upstreams := []Upstream{g.cfg.Agent, g.cfg.Runtime, g.cfg.Engine}
	health := newHealthChecker()
	g.health = health
	hooks := webhookHooks()
	maps.Copy(hooks, executionHooks())
	var vgServices []*vanguard.Service
	// streams are the server-streaming forwarders, for in-process callers
	// (the SSE bridge).
	streams := map[string]connect.StreamingHandlerFunc{}
	for i, svc := range services() {
		if _, err := upstreams[i].clientOptions(); err != nil {
			return nil, fmt.Errorf("upstream %s: %w", svc.name, err)
		}
		pool := &replicaPool{name: svc.name, service: string(svc.desc.FullName()),
			interval: g.cfg.ResolveInterval, lookup: g.cfg.lookupHost, logger: g.logger}
		pool.budget.ratio = g.cfg.RetryBudget
		pool.build = g.replicaBuilder(pool, svc.desc, upstreams[i])
		if err := newReplicaPool(g.streams, pool, upstreams[i]); err != nil {
			return nil, fmt.Errorf("upstream %s: %w", svc.name, err)
		}
		g.pools = append(g.pools, pool)
		us := upstreamService{name: svc.name, descriptor: svc.desc, pool: pool}
		us.stats = g.metrics.watchUpstream(svc.name, pool)
		vs, err := g.buildService(us, hooks, handlerOpts, streams)
		if err != nil {
			return nil, err
		}
		vgServices = append(vgServices, vs)
		health.add(string(svc.desc.FullName()), pool.healthStatus)
	}
	errs := newErrorWriter()
	noRoute := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := connect.CodeNotFound
		if isRPCRequest(r) {
			code = connect.CodeUnimplemented
		}
		errs.write(w, r, connect.NewError(code, fmt.Errorf("no route for %s %s", r.Method, r.URL.Path)))
	})
	transcoder, err := vanguard.NewTranscoder(vgServices,
		g.security.transcoderOption(),
		vanguard.WithCodec(restJSONCodec),
		vanguard.WithUnknownHandler(noRoute),
	)
	if err != nil {
		return nil, fmt.Errorf("could not build the transcoder: %w", err)
	}
	var descs []protoreflect.ServiceDescriptor
	for _, svc := range services() {
		descs = append(descs, svc.desc)
	}
	rest := restLayer(transcoder, g.rest, g.security.cfg.MaxBodyBytes, listParams(descs))
	rpc := cacheGET(rest)

	mux := http.NewServeMux()
	mux.Handle("/", rpc)
	mux.Handle("/health", health.serveHTTP(g.cfg.Version))
	mux.Handle("/api/v1/health", health.serveHTTP(g.cfg.Version))
	mux.Handle("/livez", serveLive())
	mux.Handle("/readyz", health.serveReady())
	if !g.cfg.NoMetrics {
		mux.Handle("/metrics", g.metrics.handler())
	}
	mux.Handle(grpchealth.NewHandler(health, handlerOpts...))
	reflector := grpcreflect.NewStaticReflector(reflectedServices()...)
	if g.fast != nil {
		g.fast.addHealth(health, chain)
		g.fast.addReflection(reflectedServices(), chain)
	}
	mux.Handle(grpcreflect.NewHandlerV1(reflector, handlerOpts...))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, handlerOpts...))
	if err := mountDocs(mux, g.cfg.Version); err != nil {
		return nil, err
	}
	if !g.cfg.NoConsole {
		if err := mountConsole(mux, g.security.cfg.SSECookie); err != nil {
			return nil, err
		}
	}
	bridges, err := mountSSE(mux, streams, chain, g.cfg.SSE, g.security.wrapSSE, g.logger)
	if err != nil {
		return nil, err
	}
	g.bridges = bridges
	g.security.refuseStream = refuseStreams(bridges)
	routes := routeDirect(mux, rest, directPaths(mux, g.rest.postPaths()), noRoute)
	procedures := map[string]bool{}
	for _, p := range serviceProcedures() {
		procedures[p] = true
	}
	return connectVersionDefault(procedures,
		requestID(access.Middleware(callerProtocol, grpcWebLayer(g.security.wrapHTTP(routes))))), nil
}

// directPaths are those of paths, all POST routes of the REST layer, that
// mux would hand to the REST layer anyway: those it routes to its
// catch-all "/", so a route mounted later on one of them still wins. A
// path with an escaped form of its own is left out, since mux matches on
// that form.
func directPaths(mux *http.ServeMux, paths []string) map[string]bool {
	direct := map[string]bool{}
	for _, p := range paths {
		probe := &http.Request{Method: http.MethodPost, URL: &url.URL{Path: p}, Header: http.Header{}}
		if _, pattern := mux.Handler(probe); pattern == "/" && isCleanPath(p) {
			direct[p] = true
		}
	}
	return direct
}

// routeDirect is cleanPaths around mux, except that a POST to one of the
// direct paths goes to rest without the mux's matching (a fifth of the
// HTTP layers' allocations of such a call).
func routeDirect(mux *http.ServeMux, rest http.Handler, direct map[string]bool, noRoute http.Handler) http.Handler {
	clean := cleanPaths(mux, noRoute)
	if len(direct) == 0 {
		return clean
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.RawPath == "" && direct[r.URL.Path] {
			rest.ServeHTTP(w, r)
			return
		}
		clean.ServeHTTP(w, r)
	})
}

// cleanPaths answers a path with an empty, "." or ".." segment as a route
// that does not exist. http.ServeMux would redirect it to the cleaned path
// instead: a POST to /deployments//run would be sent on, by clients that
// follow redirects, to /deployments/run, another resource than the caller
// named (an empty id is a caller's bug to report, not to repair).
func cleanPaths(next, noRoute http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; r.Method != http.MethodConnect && !isCleanPath(p) {
			noRoute.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func isCleanPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	if p[len(p)-1] == '/' && c != "/" {
		c += "/"
	}
	return c == p
}

// knownProcedures are the procedures the gateway serves, the only values
// of the metrics' procedure label.
func knownProcedures() []string {
	return append([]string{healthCheckProcedure, healthWatchProcedure,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"}, serviceProcedures()...)
}

// serviceProcedures are the paths of the three services' methods.
func serviceProcedures() []string {
	var procedures []string
	for _, svc := range services() {
		methods := svc.desc.Methods()
		for i := range methods.Len() {
			procedures = append(procedures, "/"+string(svc.desc.FullName())+"/"+string(methods.Get(i).Name()))
		}
	}
	return procedures
}

// reflectedServices are the services server reflection lists.
func reflectedServices() []string {
	names := []string{grpchealth.HealthV1ServiceName}
	for _, svc := range services() {
		names = append(names, string(svc.desc.FullName()))
	}
	return names
}

// restJSONCodec is the transcoder's JSON: snake_case field names as the
// contract asks, RFC 3339 timestamps, and unknown fields rejected rather
// than silently dropped.
func restJSONCodec(res vanguard.TypeResolver) vanguard.Codec {
	return jsonCodec{vanguard.JSONCodec{
		MarshalOptions:   protojson.MarshalOptions{Resolver: res, UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{Resolver: res},
	}}
}

// jsonCodec makes a body that does not decode the caller's fault
// (InvalidArgument) rather than an unknown error.
type jsonCodec struct {
	vanguard.JSONCodec
}

func (c jsonCodec) Unmarshal(data []byte, msg proto.Message) error {
	return invalidJSON(c.JSONCodec.Unmarshal(data, msg))
}

func (c jsonCodec) UnmarshalField(data []byte, msg proto.Message, field protoreflect.FieldDescriptor) error {
	return invalidJSON(c.JSONCodec.UnmarshalField(data, msg, field))
}

func invalidJSON(err error) error {
	if err == nil {
		return nil
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid JSON body: %s", protoErrorText(err)))
}

// protoErrorText is err's text without the "proto:" prefix of the
// protobuf libraries, which follow it with a space picked at random
// (sometimes a no-break space) so that nobody matches on their errors.
func protoErrorText(err error) string {
	msg := err.Error()
	if before, after, ok := strings.Cut(msg, "proto:"); ok {
		msg = before + strings.TrimLeft(after, " \u00a0")
	}
	return msg
}

// Handler returns the gateway's HTTP handler.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Serve serves on ln until ctx ends, then stops accepting, ends open
// streams and waits up to the shutdown timeout for in-flight calls, cuts
// what remains and returns nil. It returns an error only when serving
// fails.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           g.handler,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		TLSConfig:         g.tlsConfig,
		ErrorLog:          slog.NewLogLogger(g.logger.Handler(), slog.LevelDebug),
	}
	g.security.configureServer(srv)
	ln = g.security.limitListener(ln, g.tlsConfig == nil)
	drain := newDrainTracker()
	drain.track(srv)
	httpLn := ln
	var fastDone chan error
	var h1 *h1Fast
	split := g.tlsConfig == nil && (g.fast != nil || !g.cfg.NetHTTP1)
	if split {
		// The splitter owns ln; net/http, grpc-go and the HTTP/1.1 loop
		// get what it routes.
		sp := newConnSplitter(ln, srv.ReadHeaderTimeout, settingsFrame(g.security.cfg.MaxConcurrentStreams, uint32(min(g.security.cfg.MaxHeaderBytes, math.MaxUint32)))) //nolint:gosec // bounded
		if g.fast != nil {
			sp.grpc = newChanListener(ln.Addr())
			fastDone = make(chan error, 1)
			go func() { fastDone <- g.fast.serveOn(sp.grpc) }()
		}
		if !g.cfg.NetHTTP1 {
			h1 = newH1Fast(srv.Handler, sp.http.deliver, g.logger, srv.MaxHeaderBytes,
				srv.ReadHeaderTimeout, srv.IdleTimeout, g.security.cfg.WriteTimeout)
			sp.h1 = h1
			g.h1.Store(h1)
		}
		go sp.run()
		httpLn = sp.http
	} else if g.tlsConfig == nil {
		httpLn = contractErrorsListener{ln}
	}
	errc := make(chan error, 1)
	go func() {
		if g.tlsConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(httpLn)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	g.beginDrain()
	if split {
		_ = ln.Close()
	}
	g.shutdown(ctx, srv, drain, h1)
	<-errc // http.ErrServerClosed
	if fastDone != nil {
		<-fastDone
	}
	return nil
}

// Close releases the upstream connections and the rate limiter's Redis
// connections.
func (g *Gateway) Close() error {
	g.stopStreams()
	for _, p := range g.pools {
		p.close()
	}
	return g.security.Close()
}
