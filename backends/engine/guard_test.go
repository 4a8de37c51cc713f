package engine_test

import (
	"strings"
	"testing"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// TestGuardedExpressionsKeepTheirMeaning: the size-checked builtins and
// "+" give what the expression language's own give.
func TestGuardedExpressionsKeepTheirMeaning(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	cases := map[string]any{
		`{{ "a" + trigger.name + "b" }}`:                    "aAdab",
		`{{ trigger.n + 1 }}`:                               4.0,
		`{{ 2 + 3 }}`:                                       5.0,
		`{{ repeat("ab", 3) }}`:                             "ababab",
		`{{ join(["a", "b"], "-") }}`:                       "a-b",
		`{{ "a,b" | split(",") | join("+") }}`:              "a+b",
		`{{ replace("aXbX", "X", "yy") }}`:                  "ayybyy",
		`{{ upper(trigger.name) }}`:                         "ADA",
		`{{ toJSON({"a": 1}) }}`:                            "{\n  \"a\": 1\n}",
		`{{ string([1, 2]) }}`:                              "[1 2]",
		`{{ len(flatten([[1, 2], [3, [4]]])) }}`:            4.0,
		`{{ len(concat([1], [2, 3])) }}`:                    3.0,
		`{{ reduce(1..4, #acc + string(#), "") }}`:          "1234",
		`{{ map(filter(1..6, # % 2 == 0), # * 10) }}`:       []any{20.0, 40.0, 60.0},
		`{{ keys({"k": 1}) }}`:                              []any{"k"},
		`{{ date("2026-01-02T03:04:05Z").Format("2006") }}`: "2026",
	}
	for src, want := range cases {
		d := def([]*enginev1.Node{n("start", "trigger", nil), n("s", "set", map[string]any{"values": map[string]any{"x": src}})}, c("start", "s"))
		res := execute(t, s, d, map[string]any{"name": "Ada", "n": 3})
		if res.GetStatus() != "succeeded" {
			t.Errorf("%s: %s", src, res.GetError())
			continue
		}
		got := nodeResult(t, res, "s").GetOutput().GetStructValue().AsMap()["x"]
		if !equalJSON(got, want) {
			t.Errorf("%s = %#v, want %#v", src, got, want)
		}
	}
}

func equalJSON(a, b any) bool {
	al, aok := a.([]any)
	bl, bok := b.([]any)
	if aok && bok {
		if len(al) != len(bl) {
			return false
		}
		for i := range al {
			if !equalJSON(al[i], bl[i]) {
				return false
			}
		}
		return true
	}
	return a == b
}

// TestGuardNameIsReserved: a workflow cannot name the guard the compiler
// passes to guarded calls.
func TestGuardNameIsReserved(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	for _, src := range []string{"{{ __guard }}", `{{ let __guard = 1; repeat("x", 2) }}`} {
		d := def([]*enginev1.Node{n("start", "trigger", nil), n("s", "set", map[string]any{"values": map[string]any{"x": src}})}, c("start", "s"))
		_, err := executeErr(t.Context(), s, d, nil, 0)
		assertViolation(t, err, "workflow_definition.nodes[1].parameters.values.x")
		if !strings.Contains(err.Error(), "reserved") && !strings.Contains(err.Error(), "cannot redeclare") {
			t.Fatalf("%s: error %v does not say the name is reserved", src, err)
		}
	}
}

// TestRunBudgetSpansNodes: values that fit one by one but not together
// (each repeat is charged when built and again as an output) end the run
// with a resource error naming the budget.
func TestRunBudgetSpansNodes(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{MaxResponseBytes: 1 << 10, MaxValueBytes: 1 << 20, RunMemoryBytes: 3 << 20})
	big := `{{ repeat("x", 900000) }}`
	d := def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("a", "set", map[string]any{"values": map[string]any{"x": big}, "keep_input": false}),
		n("b", "set", map[string]any{"values": map[string]any{"y": big}, "keep_input": false}),
		n("c", "set", map[string]any{"values": map[string]any{"z": big}, "keep_input": false}),
	}, c("start", "a"), c("a", "b"), c("b", "c"))
	res := execute(t, s, d, nil)
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "resource exhausted") || !strings.Contains(res.GetError(), "memory budget of 3145728 bytes") {
		t.Fatalf("status %q error %q", res.GetStatus(), res.GetError())
	}
	if nodeResult(t, res, "a").GetStatus() != "succeeded" {
		t.Fatalf("node a: %v", nodeResult(t, res, "a"))
	}
}
