// Package agent is the reference Workflow Agent: conversational sessions in
// which a user describes a workflow, a streamed chat about it, and the live
// generation of that workflow — drafted by a [Provider], validated and
// dry-run on the engine, and deployed on the runtime.
//
// Sessions, their conversations and their generation event logs are kept in
// the shared store (SQLite or PostgreSQL), scoped by tenant, so a session
// survives a restart and a watcher that reconnects resumes exactly after
// the last event it saw. The agent reaches the engine and the runtime only
// through their generated Connect clients.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// Identity headers set by the gateway (which strips any client copy).
const (
	headerSubject = "X-Flowgate-Subject"
	headerTenant  = "X-Flowgate-Tenant"
	headerScopes  = "X-Flowgate-Scopes"
)

// Config wires the agent to its storage, the services it calls and its
// reasoning.
type Config struct {
	// Store keeps sessions, conversations and event logs. Required.
	Store *store.DB
	// Runtime loads deployments (edit sessions) and deploys generated
	// workflows. Required.
	Runtime runtimev1connect.WorkflowRuntimeServiceClient
	// Engine validates and dry-runs drafts. Required.
	Engine enginev1connect.WorkflowEngineServiceClient
	// Provider answers and plans; nil selects the offline [Planner].
	Provider Provider
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// PollInterval is how often a watcher re-reads the event log when no
	// in-process notification arrives (events appended by another replica
	// sharing PostgreSQL). Default 2s on PostgreSQL; on SQLite, where one
	// process owns the file, watchers rely on in-process notifications
	// alone unless this is set.
	PollInterval time.Duration
	// GenerationTimeout bounds one generation, from start to complete or
	// error. Default 2 minutes.
	GenerationTimeout time.Duration
}

// Service implements agentv1connect.WorkflowAgentServiceHandler.
type Service struct {
	store    *sessionStore
	runtime  runtimev1connect.WorkflowRuntimeServiceClient
	engine   enginev1connect.WorkflowEngineServiceClient
	provider Provider
	logger   *slog.Logger
	poll     time.Duration
	genLimit time.Duration
	hub      *hub

	ctx    context.Context // cancelled by Close: stops background generations
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	generations map[sessionKey]*generationState
	closed      bool
}

var _ agentv1connect.WorkflowAgentServiceHandler = (*Service)(nil)

// New validates cfg and migrates the agent's tables.
func New(ctx context.Context, cfg Config) (*Service, error) {
	switch {
	case cfg.Store == nil:
		return nil, errors.New("agent: Config.Store is required")
	case cfg.Runtime == nil:
		return nil, errors.New("agent: Config.Runtime is required")
	case cfg.Engine == nil:
		return nil, errors.New("agent: Config.Engine is required")
	}
	st, err := openSessionStore(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	s := &Service{
		store:       st,
		runtime:     cfg.Runtime,
		engine:      cfg.Engine,
		provider:    cfg.Provider,
		logger:      cfg.Logger,
		poll:        cfg.PollInterval,
		genLimit:    cfg.GenerationTimeout,
		generations: map[sessionKey]*generationState{},
	}
	s.hub = newHub(st.eventsAfter)
	if s.provider == nil {
		s.provider = NewPlanner()
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.poll <= 0 && cfg.Store.Dialect() == store.Postgres {
		s.poll = 2 * time.Second
	}
	if s.genLimit <= 0 {
		s.genLimit = 2 * time.Minute
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Close stops background generations and waits for them. Generations cut
// short are recorded as failed, so watchers learn of it.
func (s *Service) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	return nil
}

// identity is the caller as forwarded by the gateway.
type identity struct {
	tenant  string
	subject string
	scopes  string
}

// identityOf reads the caller, whose headers the backends' authentication
// set from the gateway's signed token; it refuses calls naming no tenant.
func identityOf(h interface{ Get(string) string }) identity {
	return identity{tenant: h.Get(headerTenant), subject: h.Get(headerSubject), scopes: h.Get(headerScopes)}
}

// apply forwards the identity on a call to another backend, so the runtime
// scopes its reads and writes to the same tenant.
func (id identity) apply(h interface{ Set(string, string) }) {
	h.Set(headerTenant, id.tenant)
	if id.subject != "" {
		h.Set(headerSubject, id.subject)
	}
	if id.scopes != "" {
		h.Set(headerScopes, id.scopes)
	}
}

func internalError(logger *slog.Logger, what string, err error) *connect.Error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	if errors.Is(err, context.Canceled) {
		return connect.NewError(connect.CodeCanceled, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	logger.Error("agent: "+what, "error", err)
	return connect.NewError(connect.CodeInternal, fmt.Errorf("%s failed", what))
}
