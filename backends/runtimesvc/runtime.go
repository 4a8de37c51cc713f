// Package runtimesvc is the reference Workflow Runtime: it keeps deployed
// workflows and their execution history in the database of package store,
// fires their triggers (signed webhooks, manual runs, cron schedules) and
// runs them through the engine's RPC client. [Service] implements
// runtimev1connect.WorkflowRuntimeServiceHandler.
package runtimesvc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// Config wires the runtime. Store, Engine and PublicURL are required.
type Config struct {
	// Store holds deployments and executions; migrated by New.
	Store *store.DB
	// Engine runs the workflows.
	Engine enginev1connect.WorkflowEngineServiceClient
	// PublicURL is the gateway's public base URL (scheme and host, maybe a
	// path prefix); webhook_url is PublicURL + "/api/v1/webhooks/" + path.
	PublicURL string
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// WebhookTolerance is how far a signed webhook's timestamp may be from
	// now; default 5 minutes.
	WebhookTolerance time.Duration
	// DefaultResponseTimeout is how long a "wait" webhook waits for the
	// workflow when its trigger sets no response_timeout; default 30s.
	DefaultResponseTimeout time.Duration
	// MaxResponseTimeout caps a trigger's response_timeout; default 5 minutes.
	MaxResponseTimeout time.Duration
	// RunTimeout is the deadline of one execution of a deployment that sets
	// no run_timeout; 0 lets the engine choose.
	RunTimeout time.Duration
	// MaxRunTimeout caps a deployment's run_timeout; default 30 minutes, the
	// engine's default cap, so that the longest delay the engine allows (5
	// minutes) fits with room to spare.
	MaxRunTimeout time.Duration
	// ShutdownGrace is how long Close lets running executions finish before
	// cancelling them (they are then recorded as interrupted); default 30s.
	// Shutdown's context can end the grace earlier.
	ShutdownGrace time.Duration
	// DisableScheduler turns off cron triggers in this process.
	DisableScheduler bool
	// ScheduleTick is how often due schedules are checked; default 1s.
	ScheduleTick time.Duration
	// ScheduleSync is how often schedules changed by other replicas are
	// picked up; default 10s.
	ScheduleSync time.Duration
	// SweepInterval is how often executions of replicas that died are
	// marked interrupted (PostgreSQL only); default 30s.
	SweepInterval time.Duration
	// CancelPoll is how often this process looks for cancellations that
	// other replicas recorded for its executions; default 1s.
	CancelPoll time.Duration
}

// Service is the runtime. Close it to stop its scheduler and wait for
// executions running in the background.
type Service struct {
	cfg                    Config
	db                     *store.DB
	repo                   *repo
	engine                 enginev1connect.WorkflowEngineServiceClient
	logger                 *slog.Logger
	public                 string
	instance               string
	tolerance              time.Duration
	defaultResponseTimeout time.Duration
	maxResponseTimeout     time.Duration
	sched                  *scheduler
	lockConn               *sql.Conn
	signaturesPruned       atomic.Int64 // Unix nanoseconds of the last prune of webhook signatures

	runCtx    context.Context // parent of every execution; cancelled late in Close
	runCancel context.CancelFunc
	loopStop  context.CancelFunc // stops the scheduler and sweeper
	loops     sync.WaitGroup
	runs      sync.WaitGroup
	mu        sync.Mutex
	active    map[string]*started // running executions of this process, by id
	closing   bool
	closeOnce sync.Once
}

var _ runtimev1connect.WorkflowRuntimeServiceHandler = (*Service)(nil)

// New validates cfg, migrates the runtime's tables, marks executions left
// running by a process that died as interrupted and starts the scheduler.
func New(ctx context.Context, cfg Config) (*Service, error) {
	cfg, public, err := checkConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := cfg.Store.Migrate(ctx, component, migrations(cfg.Store.Dialect())); err != nil {
		return nil, fmt.Errorf("runtimesvc: %w", err)
	}
	s := &Service{
		cfg: cfg, db: cfg.Store, repo: &repo{db: cfg.Store}, engine: cfg.Engine, logger: cfg.Logger,
		public: public, instance: uuid.NewString(), tolerance: cfg.WebhookTolerance,
		defaultResponseTimeout: cfg.DefaultResponseTimeout, maxResponseTimeout: cfg.MaxResponseTimeout,
		active: map[string]*started{},
	}
	if err := s.holdOwnerLock(ctx); err != nil {
		return nil, err
	}
	if err := s.sweepInterrupted(ctx); err != nil {
		s.releaseOwnerLock()
		return nil, fmt.Errorf("runtimesvc: mark interrupted executions: %w", err)
	}
	s.runCtx, s.runCancel = context.WithCancel(context.WithoutCancel(ctx))
	loopCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.loopStop = stop
	if !cfg.DisableScheduler {
		s.sched = &scheduler{s: s, changed: make(chan struct{}, 1)}
		s.loops.Go(func() { s.sched.loop(loopCtx) })
	}
	if s.db.Dialect() == store.Postgres {
		s.loops.Go(func() { s.sweepLoop(loopCtx) })
	}
	s.loops.Go(func() { s.cancelLoop(loopCtx) })
	return s, nil
}

func checkConfig(cfg Config) (Config, string, error) {
	if cfg.Store == nil {
		return cfg, "", errors.New("runtimesvc: Config.Store is required")
	}
	if cfg.Engine == nil {
		return cfg, "", errors.New("runtimesvc: Config.Engine is required")
	}
	public, err := normalizePublicURL(cfg.PublicURL)
	if err != nil {
		return cfg, "", err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, d := range []*time.Duration{&cfg.WebhookTolerance, &cfg.DefaultResponseTimeout, &cfg.MaxResponseTimeout,
		&cfg.RunTimeout, &cfg.MaxRunTimeout, &cfg.ShutdownGrace, &cfg.ScheduleTick, &cfg.ScheduleSync, &cfg.SweepInterval, &cfg.CancelPoll} {
		if *d < 0 {
			return cfg, "", errors.New("runtimesvc: durations must not be negative")
		}
	}
	defaultDuration(&cfg.WebhookTolerance, 5*time.Minute)
	defaultDuration(&cfg.DefaultResponseTimeout, 30*time.Second)
	defaultDuration(&cfg.MaxResponseTimeout, 5*time.Minute)
	defaultDuration(&cfg.ShutdownGrace, 30*time.Second)
	defaultDuration(&cfg.MaxRunTimeout, 30*time.Minute)
	defaultDuration(&cfg.ScheduleTick, time.Second)
	defaultDuration(&cfg.ScheduleSync, 10*time.Second)
	defaultDuration(&cfg.SweepInterval, 30*time.Second)
	defaultDuration(&cfg.CancelPoll, time.Second)
	if cfg.DefaultResponseTimeout > cfg.MaxResponseTimeout {
		return cfg, "", fmt.Errorf("runtimesvc: DefaultResponseTimeout %s exceeds MaxResponseTimeout %s", cfg.DefaultResponseTimeout, cfg.MaxResponseTimeout)
	}
	return cfg, public, nil
}

func defaultDuration(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

func normalizePublicURL(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("runtimesvc: Config.PublicURL is required")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("runtimesvc: PublicURL %q must be an absolute http or https URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("runtimesvc: PublicURL %q must not have credentials, a query or a fragment", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Close stops the scheduler and the sweeper, lets running executions
// finish for up to ShutdownGrace, then cancels the rest (recorded as
// interrupted) and releases this instance's ownership.
func (s *Service) Close() error { return s.Shutdown(context.Background()) }

// Shutdown is Close with a deadline: running executions are cancelled
// (and recorded as interrupted) when ShutdownGrace passes or ctx ends,
// whichever comes first. Cutting them is the normal end of a grace period,
// not an error.
func (s *Service) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		s.mu.Unlock()
		s.loopStop()
		s.loops.Wait()
		done := make(chan struct{})
		go func() { s.runs.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(s.cfg.ShutdownGrace):
			s.runCancel()
			<-done
		case <-ctx.Done():
			s.runCancel()
			<-done
		}
		s.runCancel()
		s.releaseOwnerLock()
	})
	return nil
}

func (s *Service) releaseOwnerLock() {
	if s.lockConn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The connection goes back to the pool, so the lock is released
	// explicitly rather than by ending the session.
	_, _ = s.lockConn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, ownerLockKey(s.instance))
	_ = s.lockConn.Close()
	s.lockConn = nil
}
