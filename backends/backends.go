// Package backends runs Flowgate's reference implementations of the three
// workflow services — the Workflow Agent, Workflow Runtime and Workflow
// Engine — over one store, each as its own gRPC (h2c) server. [Start] is
// used by cmd/flowgate for its embedded default and by cmd/flowgate-backends
// to run them as a separate process. The services talk to each other only
// through their RPC clients, over the same loopback sockets a remote caller
// would use.
package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/flowgate/flowgate/backends/agent"
	"github.com/flowgate/flowgate/backends/engine"
	"github.com/flowgate/flowgate/backends/runtimesvc"
	"github.com/flowgate/flowgate/backends/store"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
	"github.com/flowgate/flowgate/interceptors"
)

// Config configures the reference backends.
type Config struct {
	// DatabaseURL selects PostgreSQL (postgres://...); empty uses SQLite in
	// DataDir.
	DatabaseURL string
	// DataDir holds the SQLite file (default ./data).
	DataDir string
	// PublicURL is the gateway's public base URL, from which webhook URLs
	// are built.
	PublicURL string
	// EngineHTTPAllowHosts are hosts the engine's http_request nodes may
	// reach although they resolve to loopback or private addresses.
	EngineHTTPAllowHosts []string
	// AuthKey is the key shared with the gateway (at least 32 bytes):
	// every call must carry a token signed with it ([interceptors.HeaderToken]),
	// and the services sign their calls to each other with it. Required.
	AuthKey []byte
	// OpenAI, when its BaseURL is set, makes the agent reason with an
	// OpenAI-compatible chat-completions API instead of its offline planner.
	OpenAI agent.OpenAIConfig
	// TracerProvider records a server span for every call the services
	// handle, continuing the caller's W3C trace context, and a client span
	// for every call they make to each other; nil records none.
	TracerProvider trace.TracerProvider
	// Logger receives the services' operational logs; nil discards them.
	Logger *slog.Logger
}

// Listeners are where the three services accept calls.
type Listeners struct {
	Agent, Runtime, Engine net.Listener
}

// LoopbackListeners opens three listeners on kernel-chosen loopback ports,
// for the embedded default.
func LoopbackListeners() (Listeners, error) {
	var ls []net.Listener
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range ls {
				_ = l.Close()
			}
			return Listeners{}, fmt.Errorf("could not listen on loopback: %w", err)
		}
		ls = append(ls, ln)
	}
	return Listeners{Agent: ls[0], Runtime: ls[1], Engine: ls[2]}, nil
}

// Backends are the three running services.
type Backends struct {
	logger  *slog.Logger
	db      *store.DB
	runtime *runtimesvc.Service
	agent   *agent.Service
	servers []*http.Server
	tracing *interceptors.Tracing // nil when off
	done    chan error
	addrs   Listeners
}

// Start opens the store, builds the services and serves them on ls until
// [Backends.Shutdown].
func Start(ctx context.Context, cfg Config, ls Listeners) (_ *Backends, err error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	b := &Backends{logger: logger, done: make(chan error, 3), addrs: ls}
	defer func() {
		if err != nil {
			_ = b.Shutdown(context.WithoutCancel(ctx))
		}
	}()
	tokens, err := newTokens(cfg.AuthKey)
	if err != nil {
		return nil, err
	}
	b.tracing = interceptors.NewTracing(cfg.TracerProvider)
	b.db, err = store.Open(ctx, store.Config{DatabaseURL: cfg.DatabaseURL, DataDir: cfg.DataDir, Logger: logger})
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(engine.Config{Logger: logger.With("service", "engine"), HTTPAllowHosts: cfg.EngineHTTPAllowHosts})
	if err != nil {
		return nil, err
	}
	engineDesc := enginev1.File_workflow_engine_v1_engine_proto.Services().Get(0)
	b.serve(ls.Engine, engineDesc, tokens, func(mux *http.ServeMux) {
		mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(eng, b.handlerOptions(tokens, engineDesc, false)...))
	})
	client := loopbackClient()
	engineClient := enginev1connect.NewWorkflowEngineServiceClient(client, baseURL(ls.Engine), connect.WithGRPC(),
		b.clientInterceptors(interceptors.NewBackendClientInterceptor(tokens, &serviceIdentity)))

	b.runtime, err = runtimesvc.New(ctx, runtimesvc.Config{
		Store:     b.db,
		Engine:    engineClient,
		PublicURL: cfg.PublicURL,
		Logger:    logger.With("service", "runtime"),
	})
	if err != nil {
		return nil, err
	}
	runtimeDesc := runtimev1.File_workflow_runtime_v1_runtime_proto.Services().Get(0)
	b.serve(ls.Runtime, runtimeDesc, tokens, func(mux *http.ServeMux) {
		mux.Handle(runtimev1connect.NewWorkflowRuntimeServiceHandler(b.runtime, b.handlerOptions(tokens, runtimeDesc, true)...))
	})
	// The agent reads and writes workflows as its caller: the runtime
	// enforces that caller's scopes, not the agent's.
	runtimeClient := runtimev1connect.NewWorkflowRuntimeServiceClient(client, baseURL(ls.Runtime), connect.WithGRPC(),
		b.clientInterceptors(interceptors.NewBackendClientInterceptor(tokens, nil)))

	var provider agent.Provider
	if cfg.OpenAI.BaseURL != "" {
		provider, err = agent.NewOpenAI(cfg.OpenAI)
		if err != nil {
			return nil, err
		}
	}
	b.agent, err = agent.New(ctx, agent.Config{
		Store:    b.db,
		Runtime:  runtimeClient,
		Engine:   engineClient,
		Provider: provider,
		Logger:   logger.With("service", "agent"),
	})
	if err != nil {
		return nil, err
	}
	agentDesc := agentv1.File_workflow_agent_v1_agent_proto.Services().Get(0)
	b.serve(ls.Agent, agentDesc, tokens, func(mux *http.ServeMux) {
		mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(b.agent, b.handlerOptions(tokens, agentDesc, true)...))
	})
	return b, nil
}

// serve runs one service, with its health and reflection, on ln. Health
// is public (for orchestrators' probes); reflection needs a token as the
// service does.
func (b *Backends) serve(ln net.Listener, desc protoreflect.ServiceDescriptor, tokens *interceptors.BackendTokens, register func(*http.ServeMux)) {
	name := string(desc.FullName())
	mux := http.NewServeMux()
	register(mux)
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(name)))
	reflector := grpcreflect.NewStaticReflector(name)
	authOpt := connect.WithInterceptors(interceptors.NewBackendAuthInterceptor(tokens, nil, false))
	mux.Handle(grpcreflect.NewHandlerV1(reflector, authOpt))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, authOpt))
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           mux,
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(b.logger.Handler(), slog.LevelDebug),
	}
	b.servers = append(b.servers, srv)
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			b.logger.Error("backend server stopped", slog.String("service", name), slog.Any("error", err))
			b.done <- err
		}
	}()
}

// Addrs returns the addresses the agent, runtime and engine listen on.
func (b *Backends) Addrs() (agentAddr, runtimeAddr, engineAddr string) {
	return b.addrs.Agent.Addr().String(), b.addrs.Runtime.Addr().String(), b.addrs.Engine.Addr().String()
}

// Done reports a server that stopped on its own.
func (b *Backends) Done() <-chan error { return b.done }

// Shutdown stops accepting calls, waits for in-flight ones until ctx ends,
// stops the services' background work and closes the store. The engine
// stops last: the runtime's executions run on it, and those still running
// when ctx ends must be recorded as interrupted by the runtime, not cut
// under it as failures.
func (b *Backends) Shutdown(ctx context.Context) error {
	var errs []error
	// The agent first: its streams call the runtime and the engine.
	for i := len(b.servers) - 1; i >= 1; i-- {
		errs = append(errs, shutdownServer(ctx, b.servers[i]))
	}
	if b.agent != nil {
		errs = append(errs, b.agent.Close())
	}
	if b.runtime != nil {
		errs = append(errs, b.runtime.Shutdown(ctx))
	}
	if len(b.servers) > 0 {
		// Nothing of the runtime's runs on the engine any more; calls of
		// the gateway's own callers still get a moment if ctx has ended.
		engineCtx, cancel := context.WithCancel(ctx)
		if ctx.Err() != nil {
			cancel()
			engineCtx, cancel = context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		}
		errs = append(errs, shutdownServer(engineCtx, b.servers[0]))
		cancel()
	}
	if b.db != nil {
		errs = append(errs, b.db.Close())
	}
	if len(b.servers) == 0 {
		for _, ln := range []net.Listener{b.addrs.Agent, b.addrs.Runtime, b.addrs.Engine} {
			if ln != nil {
				_ = ln.Close()
			}
		}
	}
	return errors.Join(errs...)
}

func shutdownServer(ctx context.Context, srv *http.Server) error {
	if err := srv.Shutdown(ctx); err != nil {
		_ = srv.Close()
		return err
	}
	return nil
}

// clientInterceptors are the interceptors of a client of a sibling
// service: ics, and tracing outermost when on, so that the client span
// covers the whole call.
func (b *Backends) clientInterceptors(ics ...connect.Interceptor) connect.ClientOption {
	if b.tracing != nil {
		ics = append([]connect.Interceptor{b.tracing}, ics...)
	}
	return connect.WithInterceptors(ics...)
}

// loopbackClient speaks cleartext HTTP/2 to the sibling services.
func loopbackClient() *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: protocols}}
}

func baseURL(ln net.Listener) string { return "http://" + ln.Addr().String() }
