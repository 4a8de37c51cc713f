package engine

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"
)

// Defaults and bounds of a for_each node.
const (
	DefaultMaxLoopItems = 1000
	defaultLoopItems    = 100
	maxLoopSteps        = 20
)

// stepTypes are the node types a for_each step may have: those that work
// on one value. Responding, merging and nested loops belong to the
// workflow around the loop.
var stepTypes = map[string]bool{"set": true, "http_request": true, "delay": true, "condition": true}

// for_each: runs its steps, a chain, once per item of a list, and outputs
// the list of what the last step produced for each item, in item order
// whatever order the items finish in. Items run `concurrency` at a time.
// A condition step that answers false drops its item from the output.
// Expressions in the steps see the item as `item`, its position as
// `index`, the step before's output as `input`, and earlier steps' outputs
// of the same item as nodes.<step id>.

type loopNode struct {
	items       template
	steps       []loopStep
	maxItems    int
	concurrency int
}

type loopStep struct {
	id   string
	typ  string
	exec executor
}

func compileLoop(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	n := &loopNode{maxItems: min(defaultLoopItems, c.maxLoopItems), concurrency: 1}
	if _, ok := params["items"].(string); !ok {
		return nil, fieldErrorf(field+".items", "must be an expression giving a list, e.g. \"{{ trigger.body.orders }}\"")
	}
	var fe *fieldError
	if n.items, fe = compileTemplate(params["items"], field+".items", c.expr); fe != nil {
		return nil, fe
	}
	if v, ok := params["max_items"]; ok {
		m, fe := wholeInRange(v, field+".max_items", 1, int64(c.maxLoopItems))
		if fe != nil {
			return nil, fe
		}
		n.maxItems = int(m)
	}
	if v, ok := params["concurrency"]; ok {
		m, fe := wholeInRange(v, field+".concurrency", 1, int64(c.maxParallel))
		if fe != nil {
			return nil, fe
		}
		n.concurrency = int(m)
	}
	if n.steps, fe = compileSteps(c, params["steps"], field+".steps"); fe != nil {
		return nil, fe
	}
	return n, nil
}

func compileSteps(c *compiler, v any, field string) ([]loopStep, *fieldError) {
	list, ok := v.([]any)
	if !ok || len(list) == 0 || len(list) > maxLoopSteps {
		return nil, fieldErrorf(field, "must be a list of 1 to %d steps, each {id, type, parameters}", maxLoopSteps)
	}
	steps := make([]loopStep, 0, len(list))
	seen := map[string]int{}
	for i, raw := range list {
		sf := fmt.Sprintf("%s[%d]", field, i)
		obj, ok := raw.(map[string]any)
		if !ok {
			return nil, fieldErrorf(sf, "must be an object {id, type, parameters}")
		}
		for key := range obj {
			if key != "id" && key != "type" && key != "parameters" {
				return nil, fieldErrorf(sf+"."+key, "unknown field; a step has id, type and parameters")
			}
		}
		id, _ := obj["id"].(string)
		if !nodeIDPattern.MatchString(id) {
			return nil, fieldErrorf(sf+".id", "must start with a letter or underscore and hold at most 64 letters, digits, '_' or '-'")
		}
		if j, dup := seen[id]; dup {
			return nil, fieldErrorf(sf+".id", "%q is used by steps[%d] already", id, j)
		}
		seen[id] = i
		typ, _ := obj["type"].(string)
		if !stepTypes[typ] {
			return nil, fieldErrorf(sf+".type", "must be one of %s", strings.Join(sortedKeys(stepTypes), ", "))
		}
		params, ok := obj["parameters"].(map[string]any)
		if !ok && obj["parameters"] != nil {
			return nil, fieldErrorf(sf+".parameters", "must be an object")
		}
		spec := nodeTypes[typ]
		if fe := checkParams(spec, params, sf+".parameters"); fe != nil {
			return nil, fe
		}
		exec, fe := spec.compile(c, params, sf+".parameters")
		if fe != nil {
			return nil, fe
		}
		steps = append(steps, loopStep{id: id, typ: typ, exec: exec})
	}
	return steps, nil
}

// wait is the least time a full list of items spends in the steps' delays.
func (n *loopNode) wait() time.Duration {
	var per time.Duration
	for _, s := range n.steps {
		if w, ok := s.exec.(waiter); ok {
			per += w.wait()
		}
	}
	rounds := (n.maxItems + n.concurrency - 1) / n.concurrency
	return per * time.Duration(rounds)
}

func (n *loopNode) run(ctx context.Context, r *run, in *exprEnv) (outcome, error) {
	v, err := n.items.eval(ctx, in, r.limits.expr)
	if err != nil {
		return outcome{}, err
	}
	items, ok := v.([]any)
	switch {
	case v == nil:
		items = nil
	case !ok:
		return outcome{}, fmt.Errorf("items must be a list, got %s", kindOf(v))
	case len(items) > n.maxItems:
		return outcome{}, fmt.Errorf("items has %d entries; this node takes at most %d (max_items)", len(items), n.maxItems)
	}
	results, kept := n.each(ctx, r, in, items)
	if err := firstFailure(results); err != nil {
		return outcome{}, err
	}
	if err := ctx.Err(); err != nil { // items left unstarted
		return outcome{}, err
	}
	out := make([]any, 0, len(items))
	for i := range items {
		if kept[i] {
			out = append(out, results[i].output)
		}
	}
	return outcome{output: out}, nil
}

type itemResult struct {
	output any
	err    error
}

// each runs the steps for every item, concurrency at a time. The first
// failure stops the items still running; the failure reported is that of
// the earliest item, so the error does not depend on timing.
func (n *loopNode) each(ctx context.Context, r *run, in *exprEnv, items []any) ([]itemResult, []bool) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	results := make([]itemResult, len(items))
	kept := make([]bool, len(items))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(n.concurrency, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				out, keep, err := n.item(ctx, r, in, i, items[i])
				results[i], kept[i] = itemResult{output: out, err: err}, keep
				if err != nil {
					stop(errItemFailed)
				}
			}
		}()
	}
feed:
	for i := range items {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return results, kept
}

var errItemFailed = errors.New("an earlier item failed")

// firstFailure is the failure of the earliest item that failed on its own
// account, not because another item's failure stopped it.
func firstFailure(results []itemResult) error {
	var stopped error
	for i, res := range results {
		switch {
		case res.err == nil:
		case errors.Is(res.err, errItemFailed):
			stopped = res.err
		default:
			return fmt.Errorf("item %d: %w", i, res.err)
		}
	}
	return stopped
}

// item runs the steps for one item. It reports false when a condition
// step dropped the item.
func (n *loopNode) item(ctx context.Context, r *run, outer *exprEnv, index int, item any) (any, bool, error) {
	nodes := make(map[string]any, len(outer.Nodes)+len(n.steps))
	maps.Copy(nodes, outer.Nodes)
	env := &exprEnv{Trigger: outer.Trigger, Input: item, Nodes: nodes, Item: item, Index: float64(index), budget: outer.budget}
	for _, s := range n.steps {
		err := ctx.Err()
		var out outcome
		if err == nil {
			out, err = s.exec.run(ctx, r, env)
		}
		if err == nil {
			err = r.chargeOutput(out.output)
		}
		if err != nil {
			if errors.Is(context.Cause(ctx), errItemFailed) {
				return nil, false, errItemFailed
			}
			return nil, false, fmt.Errorf("step %q failed: %w", s.id, nodeError(ctx, err))
		}
		if s.typ == "condition" && out.branch != "true" {
			return nil, false, nil
		}
		out.output = normalize(out.output)
		nodes[s.id] = out.output
		env.Input = out.output
	}
	return env.Input, true, nil
}
