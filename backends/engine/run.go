package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// Run and node statuses, as the proto spells them.
const (
	StatusValid     = "valid"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusTimedOut  = "timed_out"
	StatusCanceled  = "canceled"
	StatusSkipped   = "skipped"
)

// run is the state of one execution of a workflow. Nodes run on their own
// goroutines, at most maxParallel at a time; everything below except the
// budget (atomic) and the read-only configuration is owned by the goroutine
// that schedules them, so node executors must touch nothing else.
type run struct {
	engine  *Service
	limits  *compiler
	budget  *runBudget
	wf      *workflow
	trigger map[string]any
	state   map[*node]*nodeState
	results []*enginev1.NodeResult
	resp    *webhookResponse
	last    *node // the node latest in topological order that ran
	// observe hears of each node as it finishes and of the respond node's
	// answer as soon as it exists; nil when nobody listens.
	observe func(*enginev1.StreamWorkflowResponse)
}

type nodeState struct {
	ran    bool // succeeded, or failed with continue_on_error
	output any
	branch string
}

// done is what a node's goroutine hands back to the scheduler.
type done struct {
	n   *node
	res *enginev1.NodeResult
	out outcome
	err error // the node failed; nil also with continue_on_error
}

// errSiblingFailed is the cause with which the nodes still running are
// stopped once another node has failed the run.
var errSiblingFailed = errors.New("another node failed the run")

func (s *Service) run(ctx context.Context, wf *workflow, trigger map[string]any, timeout time.Duration, observe func(*enginev1.StreamWorkflowResponse)) *enginev1.ExecutionResult {
	started := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if trigger == nil {
		trigger = map[string]any{}
	}
	r := &run{
		engine:  s,
		limits:  &s.compiler,
		budget:  newRunBudget(s.compiler.expr),
		wf:      wf,
		trigger: trigger,
		state:   make(map[*node]*nodeState, len(wf.nodes)),
		observe: observe,
	}
	status, runErr := r.schedule(ctx)
	result := &enginev1.ExecutionResult{
		Status:      status,
		NodeResults: r.results,
		Error:       runErr,
		StartedAt:   timestamppb.New(started),
		FinishedAt:  timestamppb.Now(),
	}
	if r.last != nil {
		result.Output = toValue(r.state[r.last].output)
	} else {
		result.Output = toValue(nil)
	}
	if r.resp != nil {
		result.WebhookResponse = r.resp.toProto()
	}
	return result
}

// schedule runs every node once all of its inputs are decided (ran,
// failed on, or skipped), so independent branches run at the same time and
// a merge waits for all of them. The first failure that stops the run
// stops the nodes still running and skips the rest.
func (r *run) schedule(ctx context.Context) (string, string) {
	nodeCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	waiting := make(map[*node]int, len(r.wf.nodes))
	for _, n := range r.wf.nodes {
		waiting[n] = len(n.in)
	}
	ready := []*node{r.wf.trigger}
	finished := make(chan done, len(r.wf.nodes)) // never blocks a node's goroutine
	running := 0
	status, runErr := StatusSucceeded, ""
	decided := func(n *node) {
		for _, e := range n.out {
			if waiting[e.to]--; waiting[e.to] == 0 {
				ready = insertByPos(ready, e.to)
			}
		}
	}
	for {
		for runErr == "" && running < r.limits.maxParallel && len(ready) > 0 {
			n := ready[0]
			ready = ready[1:]
			input, fired := r.input(n)
			if !fired {
				r.skip(n)
				decided(n)
				continue
			}
			env := r.env(n, input)
			running++
			go func() { finished <- r.exec(nodeCtx, n, env) }()
		}
		if running == 0 {
			break
		}
		d := <-finished
		running--
		if err := r.finish(d); err != nil && runErr == "" {
			status, runErr = runStatus(ctx, d.n, err)
			stop(errSiblingFailed)
		}
		if runErr == "" {
			decided(d.n)
		}
	}
	if runErr != "" {
		r.skipUndecided()
	}
	return status, runErr
}

func insertByPos(nodes []*node, n *node) []*node {
	i, _ := slices.BinarySearchFunc(nodes, n, func(a, b *node) int { return a.pos - b.pos })
	return slices.Insert(nodes, i, n)
}

// runStatus classifies the error that stopped a run.
func runStatus(ctx context.Context, n *node, err error) (string, string) {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return StatusTimedOut, fmt.Sprintf("the run exceeded its deadline in node %q", n.id)
	case errors.Is(ctx.Err(), context.Canceled):
		return StatusCanceled, "the run was canceled"
	default:
		return StatusFailed, fmt.Sprintf("node %q failed: %s", n.id, err)
	}
}

// env is what n's expressions see: the trigger data, n's input and the
// outputs of the nodes upstream of n that ran. Only upstream nodes, so that
// what an expression reads never depends on which branch finished first.
func (r *run) env(n *node, input any) *exprEnv {
	outputs := make(map[string]any, len(n.upstream))
	for _, u := range n.upstream {
		if st := r.state[u]; st != nil && st.ran {
			outputs[u.id] = st.output
		}
	}
	return &exprEnv{Trigger: r.trigger, Input: input, Nodes: outputs, budget: r.budget}
}

// exec runs one node on its own goroutine. It reads only what env holds
// and the run's configuration, and charges the run's budget.
func (r *run) exec(ctx context.Context, n *node, env *exprEnv) done {
	res := &enginev1.NodeResult{NodeId: n.id, Type: n.typ, StartedAt: timestamppb.Now()}
	var (
		out outcome
		err = ctx.Err()
	)
	if err == nil {
		out, err = n.exec.run(ctx, r, env)
	}
	if cerr := r.chargeOutput(out.output); cerr != nil {
		out.output = nil // too big to keep, even as a failed node's output
		if err == nil {
			err = cerr
		}
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	res.FinishedAt = timestamppb.Now()
	if err != nil {
		err = nodeError(ctx, err)
		res.Status, res.Error = StatusFailed, err.Error()
		if out.output != nil {
			res.Output = toValue(out.output)
		}
		if !n.cont || ctx.Err() != nil {
			return done{n: n, res: res, err: err}
		}
		// continue_on_error: the error becomes the output downstream nodes see.
		out = outcome{output: map[string]any{"error": err.Error(), "output": normalize(out.output)}}
	} else {
		res.Status = StatusSucceeded
	}
	out.output = normalize(out.output)
	if res.Output == nil {
		res.Output = toValue(out.output)
	}
	return done{n: n, res: res, out: out}
}

// finish records a node that ran, failed or was skipped. Every node's
// completion passes through here, once, on the scheduling goroutine. It
// returns the node's error when the node failed the run.
func (r *run) finish(d done) error {
	r.results = append(r.results, d.res)
	st := &nodeState{}
	r.state[d.n] = st
	answered := false
	if d.err == nil && d.res.GetStatus() != StatusSkipped {
		st.ran, st.output, st.branch = true, d.out.output, d.out.branch
		if r.last == nil || d.n.pos > r.last.pos {
			r.last = d.n
		}
		// The first respond node to run decides the webhook caller's
		// response.
		if d.out.response != nil && r.resp == nil {
			r.resp, answered = d.out.response, true
		}
	}
	r.finished(d.res, answered)
	return d.err
}

// finished tells the observer that a node's result is final and, when that
// node gave the run its response, what the webhook caller gets.
func (r *run) finished(res *enginev1.NodeResult, answered bool) {
	if r.observe == nil {
		return
	}
	r.observe(&enginev1.StreamWorkflowResponse{Event: &enginev1.StreamWorkflowResponse_NodeFinished{NodeFinished: res}})
	if answered {
		r.observe(&enginev1.StreamWorkflowResponse{Event: &enginev1.StreamWorkflowResponse_Respond{Respond: r.resp.toProto()}})
	}
}

func (w *webhookResponse) toProto() *enginev1.WebhookResponse {
	return &enginev1.WebhookResponse{
		StatusCode: int32(w.status), //nolint:gosec // validated to 200..599
		Headers:    w.headers,
		Body:       toValue(w.body),
	}
}

// chargeOutput measures a node's output before anything copies or
// serializes it, and takes it from the run's budget: outputs stay alive for
// the rest of the run (expressions read them as nodes.<id>).
func (r *run) chargeOutput(v any) error {
	n, err := valueSize(v, r.budget.maxValue)
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	return r.budget.charge(n)
}

// nodeError gives context errors a readable text.
func nodeError(ctx context.Context, err error) error {
	switch {
	case errors.Is(context.Cause(ctx), errSiblingFailed):
		return errors.New("stopped because another node failed the run")
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return errors.New("the run's deadline passed while the node was running")
	case errors.Is(ctx.Err(), context.Canceled):
		return errors.New("the run was canceled while the node was running")
	}
	return err
}

// input gathers what fired into n: the trigger fires by itself; another
// node takes the output of its first input that fired (a merge node: of
// every input that fired, in connection order, whichever finished first).
// A connection from a condition fires only for the branch the condition
// took.
func (r *run) input(n *node) (any, bool) {
	if n.typ == "trigger" {
		return nil, true
	}
	var fired []any
	for _, e := range n.in {
		st := r.state[e.from]
		if st == nil || !st.ran || (e.branch != "" && e.branch != st.branch) {
			continue
		}
		fired = append(fired, st.output)
	}
	switch {
	case len(fired) == 0:
		return nil, false
	case n.typ == "merge":
		return fired, true
	default:
		return fired[0], true
	}
}

func (r *run) skip(n *node) {
	_ = r.finish(done{n: n, res: &enginev1.NodeResult{NodeId: n.id, Type: n.typ, Status: StatusSkipped}})
}

// skipUndecided records every node the stopped run never reached, in
// topological order.
func (r *run) skipUndecided() {
	for _, n := range r.wf.order {
		if r.state[n] == nil {
			r.skip(n)
		}
	}
}
