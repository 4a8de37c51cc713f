// Package server assembles the Flowgate gateway: one HTTP handler that
// serves REST, Connect, gRPC and gRPC-Web for the three workflow services
// by transcoding every caller's protocol onto forwarding Connect handlers,
// plus health, server reflection, API docs and the Server-Sent-Events
// routes. [New] builds a [Gateway] from a [Config]; [Gateway.Serve] runs it
// on a listener until its context ends, then drains.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/vanguard"
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
	// ShutdownTimeout bounds draining in-flight calls (default 15s).
	ShutdownTimeout time.Duration
	// Version is reported by the health endpoints.
	Version string
	// Logger receives the access log and operational messages; nil
	// discards them.
	Logger *slog.Logger
}

// Gateway is a configured gateway, ready to serve.
type Gateway struct {
	cfg         Config
	logger      *slog.Logger
	headers     headerPolicy
	handler     http.Handler
	clients     []*http.Client
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
	handler, err := g.buildHandler()
	if err != nil {
		return nil, err
	}
	g.handler = handler
	return g, nil
}

// buildHandler assembles the routes and the middleware around them.
func (g *Gateway) buildHandler() (http.Handler, error) {
	access := interceptors.NewAccessLog(g.logger)
	chain := append([]connect.Interceptor{access.Interceptor(), restTraceInterceptor()}, g.security.interceptors()...)
	handlerOpts := append([]connect.HandlerOption{connect.WithInterceptors(chain...)}, g.security.handlerOptions()...)
	upstreams := []Upstream{g.cfg.Agent, g.cfg.Runtime, g.cfg.Engine}
	health := newHealthChecker()
	hooks := webhookHooks()
	var vgServices []*vanguard.Service
	// streams are the server-streaming forwarders, for in-process callers
	// (the SSE bridge).
	streams := map[string]connect.StreamingHandlerFunc{}
	for i, svc := range services() {
		base, err := upstreams[i].baseURL()
		if err != nil {
			return nil, fmt.Errorf("upstream %s: %w", svc.name, err)
		}
		client := newUpstreamClient(base, g.cfg.DialTimeout)
		g.clients = append(g.clients, client)
		vs, err := g.buildService(upstreamService{name: svc.name, descriptor: svc.desc, httpClient: client}, upstreams[i], hooks, handlerOpts, streams)
		if err != nil {
			return nil, err
		}
		vgServices = append(vgServices, vs)
		healthOpts, _ := upstreams[i].clientOptions()
		health.add(string(svc.desc.FullName()), client, base.String(), healthOpts[1:]...)
	}
	errs := newErrorWriter()
	transcoder, err := vanguard.NewTranscoder(vgServices,
		g.security.transcoderOption(),
		vanguard.WithCodec(restJSONCodec),
		vanguard.WithUnknownHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			code := connect.CodeNotFound
			if isRPCRequest(r) {
				code = connect.CodeUnimplemented
			}
			errs.write(w, r, connect.NewError(code, fmt.Errorf("no route for %s %s", r.Method, r.URL.Path)))
		})),
	)
	if err != nil {
		return nil, fmt.Errorf("could not build the transcoder: %w", err)
	}
	rpc := restLayer(transcoder)

	mux := http.NewServeMux()
	mux.Handle("/", rpc)
	mux.Handle("/health", health.serveHTTP(g.cfg.Version))
	mux.Handle("/api/v1/health", health.serveHTTP(g.cfg.Version))
	mux.Handle(grpchealth.NewHandler(health, handlerOpts...))
	reflector := grpcreflect.NewStaticReflector(reflectedServices()...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector, handlerOpts...))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, handlerOpts...))
	if err := mountDocs(mux, g.cfg.Version); err != nil {
		return nil, err
	}
	bridges, err := mountSSE(mux, streams, chain, g.cfg.SSE, g.security.wrapSSE, g.logger)
	if err != nil {
		return nil, err
	}
	g.bridges = bridges
	return requestID(access.Middleware(callerProtocol, g.security.wrapHTTP(mux))), nil
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
	msg := strings.TrimPrefix(err.Error(), "proto: ")
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid JSON body: %s", msg))
}

// Handler returns the gateway's HTTP handler.
func (g *Gateway) Handler() http.Handler { return g.handler }

// Serve serves on ln until ctx ends, then stops accepting, ends open
// streams and waits up to the shutdown timeout for in-flight calls.
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
	ln = g.security.limitListener(ln)
	errc := make(chan error, 1)
	go func() {
		if g.tlsConfig != nil {
			errc <- srv.ServeTLS(ln, "", "")
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	g.logger.Info("shutting down", slog.Duration("timeout", g.cfg.ShutdownTimeout))
	g.stopStreams()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(shutdownCtx)
	if err != nil {
		_ = srv.Close()
	}
	// Streams on connections taken over from net/http end with the others
	// (stopStreams ended their calls); wait for their final events.
	for _, b := range g.bridges {
		if berr := b.Shutdown(shutdownCtx); err == nil {
			err = berr
		}
	}
	<-errc
	return err
}

// Close releases the upstream connections and the rate limiter's Redis
// connections.
func (g *Gateway) Close() error {
	g.stopStreams()
	closeIdle(g.clients)
	return g.security.Close()
}
