// Package engine is the reference Workflow Engine: it validates workflow
// definitions (a DAG of typed nodes) and runs them node by node, with
// expressions evaluated by github.com/expr-lang/expr under cost and time
// limits, outbound HTTP guarded against internal destinations, and a
// deadline on the whole run. [Service] implements
// enginev1connect.WorkflowEngineServiceHandler.
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// Defaults of [Config].
const (
	DefaultMaxDelay = 5 * time.Minute
	// DefaultRunTimeout holds the longest delay a node may take and leaves
	// a minute for the rest of the run.
	DefaultRunTimeout       = DefaultMaxDelay + time.Minute
	DefaultMaxRunTimeout    = 30 * time.Minute
	DefaultHTTPTimeout      = 30 * time.Second
	DefaultMaxResponseBytes = 10 << 20
	DefaultMaxNodes         = 500
	DefaultExprTimeout      = 250 * time.Millisecond
	DefaultExprMemoryBudget = 200_000
	DefaultExprMaxNodes     = 2_000
	DefaultExprMaxLength    = 16 << 10
	DefaultMaxValueBytes    = 16 << 20
	DefaultRunMemoryBytes   = 64 << 20
	DefaultRunExprTime      = 5 * time.Second
	DefaultMaxParallelNodes = 8
)

// Config tunes the engine. Zero values take the defaults above.
type Config struct {
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
	// HTTPAllowHosts opens destinations that http_request refuses by default
	// (loopback, private, link-local, metadata): host names or IP addresses
	// matched against the URL's host, or CIDR ranges matched against the
	// resolved address.
	HTTPAllowHosts []string
	// DefaultRunTimeout is a run's deadline when the request gives none.
	DefaultRunTimeout time.Duration
	// MaxRunTimeout caps the deadline a request may ask for.
	MaxRunTimeout time.Duration
	// MaxDelay caps one delay node. It must be shorter than
	// DefaultRunTimeout, so that a run given no deadline can wait that long;
	// unset, it is the smaller of DefaultMaxDelay and DefaultRunTimeout less
	// a minute (or less half of it, when that is shorter than two minutes).
	MaxDelay time.Duration
	// HTTPTimeout is the default and the cap of one http_request.
	HTTPTimeout time.Duration
	// MaxResponseBytes is the default and the cap of an http_request
	// response body.
	MaxResponseBytes int64
	// MaxNodes caps the nodes of one definition.
	MaxNodes int
	// ExprTimeout bounds the wall-clock time of one expression evaluation.
	ExprTimeout time.Duration
	// ExprMemoryBudget bounds the work of one expression evaluation in the
	// expression VM's allocation units.
	ExprMemoryBudget uint
	// ExprMaxNodes bounds the size of one expression's syntax tree.
	ExprMaxNodes uint
	// ExprMaxLength bounds the source of one expression, in bytes.
	ExprMaxLength int
	// MaxValueBytes bounds any one value an expression builds and any node
	// output, measured as JSON. It must hold MaxResponseBytes.
	MaxValueBytes int64
	// RunMemoryBytes bounds what one run builds in all: every guarded
	// allocation of its expressions and every node output, in bytes.
	RunMemoryBytes int64
	// RunExprTime bounds the evaluation time of all of a run's expressions.
	RunExprTime time.Duration
	// MaxParallelNodes bounds how many nodes of one run execute at the
	// same time (independent branches run concurrently), and the
	// concurrency one for_each node may ask for.
	MaxParallelNodes int
	// MaxLoopItems caps the max_items a for_each node may ask for.
	MaxLoopItems int
}

// Service runs workflows. It is safe for concurrent use.
type Service struct {
	compiler   compiler
	defTimeout time.Duration
	maxTimeout time.Duration
	httpClient *http.Client
	logger     *slog.Logger
}

var _ enginev1connect.WorkflowEngineServiceHandler = (*Service)(nil)

// compiler holds the limits that validation checks definitions against.
type compiler struct {
	expr             exprLimits
	maxNodes         int
	maxDelay         time.Duration
	httpTimeout      time.Duration
	maxResponseBytes int64
	maxParallel      int
	maxLoopItems     int
}

// New validates cfg and builds the engine.
func New(cfg Config) (*Service, error) {
	cfg = withDefaults(cfg)
	if cfg.DefaultRunTimeout > cfg.MaxRunTimeout {
		return nil, fmt.Errorf("engine: DefaultRunTimeout %s exceeds MaxRunTimeout %s", cfg.DefaultRunTimeout, cfg.MaxRunTimeout)
	}
	if cfg.MaxDelay >= cfg.DefaultRunTimeout {
		return nil, fmt.Errorf("engine: MaxDelay %s must be shorter than DefaultRunTimeout %s, or the longest delay could never finish", cfg.MaxDelay, cfg.DefaultRunTimeout)
	}
	if cfg.DefaultRunTimeout < 0 || cfg.MaxDelay < 0 || cfg.HTTPTimeout < 0 || cfg.MaxResponseBytes < 0 || cfg.MaxNodes < 0 || cfg.ExprTimeout < 0 || cfg.MaxParallelNodes < 0 || cfg.MaxLoopItems < 0 ||
		cfg.ExprMaxLength < 0 || cfg.MaxValueBytes < 0 || cfg.RunMemoryBytes < 0 || cfg.RunExprTime < 0 {
		return nil, errors.New("engine: limits must not be negative")
	}
	if cfg.MaxValueBytes < cfg.MaxResponseBytes+64<<10 || cfg.RunMemoryBytes < cfg.MaxValueBytes {
		return nil, fmt.Errorf("engine: MaxValueBytes (%d) must exceed MaxResponseBytes (%d) by 64 KiB, and RunMemoryBytes (%d) must hold it",
			cfg.MaxValueBytes, cfg.MaxResponseBytes, cfg.RunMemoryBytes)
	}
	allow, err := newAllowlist(cfg.HTTPAllowHosts)
	if err != nil {
		return nil, fmt.Errorf("engine: %w", err)
	}
	return &Service{
		compiler: compiler{
			expr: exprLimits{
				maxNodes: cfg.ExprMaxNodes, maxLength: cfg.ExprMaxLength, memoryBudget: cfg.ExprMemoryBudget, timeout: cfg.ExprTimeout,
				maxValue: cfg.MaxValueBytes, runMemory: cfg.RunMemoryBytes, runCPU: cfg.RunExprTime,
			},
			maxNodes:         cfg.MaxNodes,
			maxDelay:         cfg.MaxDelay,
			httpTimeout:      cfg.HTTPTimeout,
			maxResponseBytes: cfg.MaxResponseBytes,
			maxParallel:      cfg.MaxParallelNodes,
			maxLoopItems:     cfg.MaxLoopItems,
		},
		defTimeout: cfg.DefaultRunTimeout,
		maxTimeout: cfg.MaxRunTimeout,
		httpClient: newHTTPClient(allow),
		logger:     cfg.Logger,
	}, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	defaultTimeout := cfg.DefaultRunTimeout == 0 // a lower MaxRunTimeout then lowers it
	setDefault(&cfg.DefaultRunTimeout, DefaultRunTimeout)
	setDefault(&cfg.MaxRunTimeout, DefaultMaxRunTimeout)
	setDefault(&cfg.HTTPTimeout, DefaultHTTPTimeout)
	setDefault(&cfg.MaxResponseBytes, DefaultMaxResponseBytes)
	setDefault(&cfg.MaxNodes, DefaultMaxNodes)
	setDefault(&cfg.ExprTimeout, DefaultExprTimeout)
	setDefault(&cfg.ExprMemoryBudget, DefaultExprMemoryBudget)
	setDefault(&cfg.ExprMaxNodes, DefaultExprMaxNodes)
	setDefault(&cfg.ExprMaxLength, DefaultExprMaxLength)
	setDefault(&cfg.MaxValueBytes, max(DefaultMaxValueBytes, cfg.MaxResponseBytes+1<<20))
	setDefault(&cfg.RunMemoryBytes, max(DefaultRunMemoryBytes, 4*cfg.MaxValueBytes))
	setDefault(&cfg.RunExprTime, DefaultRunExprTime)
	setDefault(&cfg.MaxParallelNodes, DefaultMaxParallelNodes)
	setDefault(&cfg.MaxLoopItems, DefaultMaxLoopItems)
	if defaultTimeout && cfg.DefaultRunTimeout > cfg.MaxRunTimeout {
		cfg.DefaultRunTimeout = cfg.MaxRunTimeout
	}
	margin := time.Minute
	if cfg.DefaultRunTimeout < 2*margin {
		margin = cfg.DefaultRunTimeout / 2
	}
	setDefault(&cfg.MaxDelay, min(DefaultMaxDelay, cfg.DefaultRunTimeout-margin))
	return cfg
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// ExecuteWorkflow validates the definition and, unless validate_only is
// set, runs it. A run that fails is still a successful RPC: the result's
// status and node results say what happened.
func (s *Service) ExecuteWorkflow(ctx context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	msg := req.Msg
	wf, timeout, err := s.prepare(msg.GetWorkflowDefinition(), msg.Timeout)
	if err != nil {
		return nil, err
	}
	if msg.GetValidateOnly() {
		return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{Status: StatusValid}}), nil
	}
	result := s.run(ctx, wf, msg.GetTriggerData().AsMap(), timeout, nil)
	if err := s.ran(ctx, wf, result); err != nil {
		return nil, err
	}
	return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: result}), nil
}

// ran logs a run that ended, or refuses its result when the run ended
// because the caller went away.
func (s *Service) ran(ctx context.Context, wf *workflow, result *enginev1.ExecutionResult) error {
	if result.GetStatus() == StatusCanceled && ctx.Err() != nil {
		return errCallerCanceled()
	}
	s.logger.LogAttrs(ctx, slog.LevelDebug, "workflow ran",
		slog.String("workflow", wf.name), slog.String("status", result.GetStatus()),
		slog.Int("nodes", len(result.GetNodeResults())))
	return nil
}

// errCallerCanceled is fresh per call: a connect error carries its own metadata.
func errCallerCanceled() error {
	return connect.NewError(connect.CodeCanceled, errors.New("the caller canceled the run"))
}

// prepare compiles a definition and settles the run's deadline.
func (s *Service) prepare(def *enginev1.WorkflowDefinition, timeout *durationpb.Duration) (*workflow, time.Duration, error) {
	wf, fe := s.compiler.compileDefinition(def)
	if fe != nil {
		return nil, 0, invalidArgument(fe)
	}
	d, fe := s.runTimeout(timeout)
	if fe != nil {
		return nil, 0, invalidArgument(fe)
	}
	if fe := wf.checkDelays(d, s.maxTimeout); fe != nil {
		return nil, 0, invalidArgument(fe)
	}
	return wf, d, nil
}

func (s *Service) runTimeout(timeout *durationpb.Duration) (time.Duration, *fieldError) {
	if timeout == nil {
		return s.defTimeout, nil
	}
	if err := timeout.CheckValid(); err != nil {
		return 0, fieldErrorf("timeout", "is not a valid duration")
	}
	d := timeout.AsDuration()
	if d <= 0 {
		return 0, fieldErrorf("timeout", "must be positive")
	}
	return min(d, s.maxTimeout), nil
}
