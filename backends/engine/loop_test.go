package engine_test

import (
	"strings"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

func loopFlow(params map[string]any) *enginev1.WorkflowDefinition {
	return def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("tag", "set", map[string]any{"values": map[string]any{"shop": "acme"}, "keep_input": false}),
		n("each", "for_each", params),
	}, c("start", "tag"), c("tag", "each"))
}

func step(id, typ string, params map[string]any) map[string]any {
	return map[string]any{"id": id, "type": typ, "parameters": params}
}

func TestForEach(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	d := loopFlow(map[string]any{
		"items": "{{ trigger.orders }}",
		"steps": []any{
			step("big", "condition", map[string]any{"expression": "item.total > 100"}),
			step("shape", "set", map[string]any{"keep_input": false, "values": map[string]any{
				"id": "{{ item.id }}", "double": "{{ input.total * 2 }}", "at": "{{ index }}", "shop": "{{ nodes.tag.shop }}",
			}}),
			step("label", "set", map[string]any{"values": map[string]any{"label": "{{ nodes.shape.id }}-{{ nodes.shape.at }}"}}),
		},
	})
	orders := []any{map[string]any{"id": "a", "total": 50}, map[string]any{"id": "b", "total": 150}, map[string]any{"id": "c", "total": 300}}
	res := execute(t, s, d, map[string]any{"orders": orders})
	if res.GetStatus() != "succeeded" {
		t.Fatalf("status %q: %s", res.GetStatus(), res.GetError())
	}
	got := nodeResult(t, res, "each").GetOutput().GetListValue().AsSlice()
	if len(got) != 2 {
		t.Fatalf("output %v: the small order was not dropped", got)
	}
	first := got[0].(map[string]any)
	if first["id"] != "b" || first["double"] != 300.0 || first["at"] != 1.0 || first["shop"] != "acme" || first["label"] != "b-1" {
		t.Fatalf("first result %v", first)
	}
	if got[1].(map[string]any)["id"] != "c" {
		t.Fatalf("second result %v", got[1])
	}

	// An empty or missing list gives an empty output.
	res = execute(t, s, d, map[string]any{})
	if res.GetStatus() != "succeeded" || len(nodeResult(t, res, "each").GetOutput().GetListValue().GetValues()) != 0 {
		t.Fatalf("no items: %v", res)
	}
	// Not a list, or too long a list, fails the node with a reason.
	res = execute(t, s, d, map[string]any{"orders": "abc"})
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "items must be a list, got a string") {
		t.Fatalf("string items: %q", res.GetError())
	}
	d.Nodes[2].Parameters.Fields["max_items"] = structValue(2)
	res = execute(t, s, d, map[string]any{"orders": orders})
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "items has 3 entries; this node takes at most 2") {
		t.Fatalf("too many items: %q", res.GetError())
	}
}

func TestForEachConcurrencyKeepsItemOrder(t *testing.T) {
	t.Parallel()
	srv := newBarrierServer(t, 3)
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	d := loopFlow(map[string]any{
		"items":       "{{ trigger.paths }}",
		"concurrency": 3,
		"steps":       []any{step("call", "http_request", map[string]any{"url": srv.URL + "{{ item }}"})},
	})
	res := execute(t, s, d, map[string]any{"paths": []any{"/a/slow", "/b", "/c"}})
	if res.GetStatus() != "succeeded" {
		t.Fatalf("status %q: %s (all three items must be in flight together)", res.GetStatus(), res.GetError())
	}
	var paths []string
	for _, v := range nodeResult(t, res, "each").GetOutput().GetListValue().AsSlice() {
		paths = append(paths, v.(map[string]any)["body"].(map[string]any)["path"].(string))
	}
	if strings.Join(paths, ",") != "/a/slow,/b,/c" {
		t.Fatalf("results %v, want item order", paths)
	}

	// One item failing fails the node, naming the item and the step.
	res = execute(t, s, d, map[string]any{"paths": []any{"/x/fail", "/y", "/z"}})
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), `item 0: step "call" failed`) {
		t.Fatalf("status %q error %q", res.GetStatus(), res.GetError())
	}
}

func TestForEachValidation(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{MaxParallelNodes: 4, MaxLoopItems: 50})
	const field = "workflow_definition.nodes[2].parameters"
	ok := []any{step("s", "set", map[string]any{"values": map[string]any{"x": 1}})}
	for _, tc := range []struct {
		params map[string]any
		field  string
	}{
		{map[string]any{"items": "{{ trigger.x }}"}, field + ".steps"},
		{map[string]any{"steps": ok}, field + ".items"},
		{map[string]any{"items": 3, "steps": ok}, field + ".items"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{}}, field + ".steps"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{step("r", "respond", nil)}}, field + ".steps[0].type"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{step("l", "for_each", nil)}}, field + ".steps[0].type"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": append(ok, ok[0])}, field + ".steps[1].id"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{step("c", "http_request", map[string]any{"url": "https://example.com", "verb": "GET"})}}, field + ".steps[0].parameters.verb"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{step("c", "condition", map[string]any{"expression": "item.total * 2"})}}, field + ".steps[0].parameters.expression"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": []any{map[string]any{"id": "s", "type": "set", "params": map[string]any{}}}}, field + ".steps[0].params"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": ok, "concurrency": 5}, field + ".concurrency"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": ok, "max_items": 51}, field + ".max_items"},
		{map[string]any{"items": "{{ trigger.x }}", "steps": ok, "max_items": 0}, field + ".max_items"},
	} {
		_, err := executeErr(t.Context(), s, loopFlow(tc.params), nil, 0)
		assertViolation(t, err, tc.field)
	}

	// Delays in the steps count once per round of items against the deadline.
	waits := func(concurrency int) *enginev1.WorkflowDefinition {
		return loopFlow(map[string]any{"items": "{{ trigger.x }}", "max_items": 10, "concurrency": concurrency,
			"steps": []any{step("w", "delay", map[string]any{"duration": "10s"})}})
	}
	_, err := executeErr(t.Context(), s, waits(1), nil, time.Minute)
	assertViolation(t, err, field)
	if _, err := validateOnly(t, s, waits(4), time.Minute); err != nil {
		t.Fatalf("three rounds of 10s refused under a minute: %v", err)
	}
}
