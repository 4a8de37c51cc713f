package backends

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

func TestStartNeedsTheSharedKey(t *testing.T) {
	t.Parallel()
	for name, key := range map[string][]byte{"none": nil, "short": []byte("short")} {
		ls, err := LoopbackListeners()
		if err != nil {
			t.Fatal(err)
		}
		_, err = Start(context.Background(), Config{DataDir: t.TempDir(), PublicURL: "http://gw.test", AuthKey: key}, ls)
		if err == nil || !strings.Contains(err.Error(), "key") {
			t.Errorf("%s: %v", name, err)
		}
		// The listeners were handed over and are closed.
		if _, err := ls.Runtime.Accept(); err == nil {
			t.Errorf("%s: listener still open", name)
		}
	}
}

func TestCheckTextFindsNULAnywhere(t *testing.T) {
	t.Parallel()
	data, _ := structpb.NewStruct(map[string]any{"list": []any{"ok", map[string]any{"deep": "a\x00b"}}})
	for want, msg := range map[string]any{
		"name": &runtimev1.CreateDeploymentRequest{Name: "a\x00"},
		"workflow_definition.nodes[1].id": &runtimev1.CreateDeploymentRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{
			Nodes: []*enginev1.Node{{Id: "ok"}, {Id: "b\x00"}}}},
		"trigger_data.fields.list.list_value.values[1].struct_value.fields.deep.string_value": &runtimev1.RunDeploymentRequest{TriggerData: data},
		"headers": &runtimev1.TriggerWebhookRequest{Headers: map[string]string{"k\x00": "v"}},
	} {
		err := checkText(msg)
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), want+":") {
			t.Errorf("%T: %v, want invalid argument naming %s", msg, err, want)
		}
	}
	if err := checkText(&runtimev1.CreateDeploymentRequest{Name: "fine", Description: "ünïcode"}); err != nil {
		t.Errorf("clean message: %v", err)
	}
}
