package agent

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// A dry run must not reach out from inside a for_each either.
func TestSideEffectsSeeIntoForEach(t *testing.T) {
	t.Parallel()
	loop := func(stepType string) *enginev1.WorkflowDefinition {
		params, err := structpb.NewStruct(map[string]any{"items": "{{ trigger.x }}", "steps": []any{
			map[string]any{"id": "s", "type": stepType, "parameters": map[string]any{}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		return &enginev1.WorkflowDefinition{Nodes: []*enginev1.Node{{Id: "start", Type: "trigger"}, {Id: "each", Type: "for_each", Parameters: params}}}
	}
	if got := sideEffects(loop("http_request")); !strings.Contains(got, `"each"`) {
		t.Fatalf("http_request step: %q", got)
	}
	if got := sideEffects(loop("delay")); got == "" {
		t.Fatal("delay step not seen")
	}
	if got := sideEffects(loop("set")); got != "" {
		t.Fatalf("set step: %q", got)
	}
}
