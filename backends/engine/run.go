package engine

import (
	"context"
	"errors"
	"fmt"
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

// run is the state of one execution of a workflow.
type run struct {
	engine  *Service
	limits  *compiler
	budget  *runBudget
	outputs map[string]any // node id -> output, for expressions
	state   map[*node]*nodeState
	results []*enginev1.NodeResult
	resp    *webhookResponse
	last    any
	// observe hears of each node as it finishes and of the respond node's
	// answer as soon as it exists; nil when nobody listens.
	observe   func(*enginev1.StreamWorkflowResponse)
	responded bool
}

type nodeState struct {
	ran    bool // succeeded, or failed with continue_on_error
	output any
	branch string
}

func (s *Service) run(ctx context.Context, wf *workflow, trigger map[string]any, timeout time.Duration, observe func(*enginev1.StreamWorkflowResponse)) *enginev1.ExecutionResult {
	started := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r := &run{
		engine:  s,
		limits:  &s.compiler,
		budget:  newRunBudget(s.compiler.expr),
		outputs: make(map[string]any, len(wf.nodes)),
		state:   make(map[*node]*nodeState, len(wf.nodes)),
		observe: observe,
	}
	if trigger == nil {
		trigger = map[string]any{}
	}
	status, runErr := StatusSucceeded, ""
	for i, n := range wf.order {
		err := r.step(ctx, n, trigger)
		if err == nil {
			continue
		}
		status, runErr = runStatus(ctx, n, err)
		r.skipRest(wf.order[i+1:])
		break
	}
	result := &enginev1.ExecutionResult{
		Status:      status,
		NodeResults: r.results,
		Output:      toValue(r.last),
		Error:       runErr,
		StartedAt:   timestamppb.New(started),
		FinishedAt:  timestamppb.Now(),
	}
	if r.resp != nil {
		result.WebhookResponse = r.resp.toProto()
	}
	return result
}

func (w *webhookResponse) toProto() *enginev1.WebhookResponse {
	return &enginev1.WebhookResponse{
		StatusCode: int32(w.status), //nolint:gosec // validated to 200..599
		Headers:    w.headers,
		Body:       toValue(w.body),
	}
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

// step runs one node if any of its inputs fired, and records its result.
// It returns an error only when the node failed and the run must stop.
func (r *run) step(ctx context.Context, n *node, trigger map[string]any) error {
	input, fired := r.input(n)
	if !fired {
		r.skip(n)
		return nil
	}
	nodeStarted := time.Now()
	res := &enginev1.NodeResult{NodeId: n.id, Type: n.typ, StartedAt: timestamppb.New(nodeStarted)}
	defer r.finished(res)
	var (
		out outcome
		err = ctx.Err()
	)
	if err == nil {
		out, err = n.exec.run(ctx, r, &exprEnv{Trigger: trigger, Input: input, Nodes: r.outputs, budget: r.budget})
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
	st := &nodeState{}
	r.state[n] = st
	r.results = append(r.results, res)
	if err != nil {
		err = nodeError(ctx, err)
		res.Status, res.Error = StatusFailed, err.Error()
		if out.output != nil {
			res.Output = toValue(out.output)
		}
		if !n.cont || ctx.Err() != nil {
			return err
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
	st.ran, st.output, st.branch = true, out.output, out.branch
	r.outputs[n.id] = out.output
	r.last = out.output
	if out.response != nil && r.resp == nil {
		r.resp = out.response
	}
	return nil
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
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return errors.New("the run's deadline passed while the node was running")
	case errors.Is(ctx.Err(), context.Canceled):
		return errors.New("the run was canceled while the node was running")
	}
	return err
}

// input gathers what fired into n: the trigger fires by itself; another
// node takes the output of its first input that fired (a merge node: of
// every input that fired, in connection order). A connection from a
// condition fires only for the branch the condition took.
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
	r.state[n] = &nodeState{}
	res := &enginev1.NodeResult{NodeId: n.id, Type: n.typ, Status: StatusSkipped}
	r.results = append(r.results, res)
	r.finished(res)
}

// finished tells the observer that a node's result is final and, the first
// time a respond node has set one, what the webhook caller gets.
func (r *run) finished(res *enginev1.NodeResult) {
	if r.observe == nil {
		return
	}
	r.observe(&enginev1.StreamWorkflowResponse{Event: &enginev1.StreamWorkflowResponse_NodeFinished{NodeFinished: res}})
	if r.resp != nil && !r.responded {
		r.responded = true
		r.observe(&enginev1.StreamWorkflowResponse{Event: &enginev1.StreamWorkflowResponse_Respond{Respond: r.resp.toProto()}})
	}
}

func (r *run) skipRest(nodes []*node) {
	for _, n := range nodes {
		r.skip(n)
	}
}
