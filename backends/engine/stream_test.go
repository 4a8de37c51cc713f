package engine_test

import (
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// streamClient serves the engine over h2c on a loopback port and returns
// a client of it.
func streamClient(t *testing.T) enginev1connect.WorkflowEngineServiceClient {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(newEngine(t, engine.Config{})))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: mux, Protocols: &protocols, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return enginev1connect.NewWorkflowEngineServiceClient(&http.Client{Transport: &http.Transport{Protocols: &protocols}}, "http://"+ln.Addr().String(), connect.WithGRPC())
}

// TestStreamWorkflow: each node is reported as it finishes, the respond
// node's answer as soon as it ran (before the delay after it ends), and
// the result last.
func TestStreamWorkflow(t *testing.T) {
	t.Parallel()
	client := streamClient(t)
	wf := def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("ack", "respond", map[string]any{"status_code": 202, "body": "accepted"}),
		n("wait", "delay", map[string]any{"duration": "400ms"}),
		n("done", "set", map[string]any{"values": map[string]any{"ok": true}}),
	}, c("start", "ack"), c("ack", "wait"), c("wait", "done"))
	stream, err := client.StreamWorkflow(t.Context(), connect.NewRequest(&enginev1.StreamWorkflowRequest{WorkflowDefinition: wf}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	begun := time.Now()
	var (
		events      []string
		respondedAt time.Duration
		result      *enginev1.ExecutionResult
	)
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *enginev1.StreamWorkflowResponse_NodeFinished:
			events = append(events, ev.NodeFinished.GetNodeId()+":"+ev.NodeFinished.GetStatus())
		case *enginev1.StreamWorkflowResponse_Respond:
			events = append(events, "respond")
			respondedAt = time.Since(begun)
			if ev.Respond.GetStatusCode() != 202 || ev.Respond.GetBody().GetStringValue() != "accepted" {
				t.Errorf("respond event %v", ev.Respond)
			}
		case *enginev1.StreamWorkflowResponse_Result:
			events = append(events, "result")
			result = ev.Result
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"start:succeeded", "ack:succeeded", "respond", "wait:succeeded", "done:succeeded", "result"}
	if len(events) != len(want) {
		t.Fatalf("events %v, want %v", events, want)
	}
	for i := range want {
		if events[i] != want[i] {
			t.Fatalf("events %v, want %v", events, want)
		}
	}
	if respondedAt > 300*time.Millisecond {
		t.Errorf("the respond event came after %v, not before the delay", respondedAt)
	}
	if result.GetStatus() != engine.StatusSucceeded || len(result.GetNodeResults()) != 4 || result.GetWebhookResponse().GetStatusCode() != 202 {
		t.Errorf("result %v", result)
	}
}

// TestStreamWorkflowInvalid: a bad definition is refused before anything
// runs, as ExecuteWorkflow refuses it.
func TestStreamWorkflowInvalid(t *testing.T) {
	t.Parallel()
	stream, err := streamClient(t).StreamWorkflow(t.Context(), connect.NewRequest(&enginev1.StreamWorkflowRequest{
		WorkflowDefinition: def([]*enginev1.Node{n("x", "nope", nil)}),
	}))
	if err == nil {
		for stream.Receive() {
			t.Errorf("event for an invalid definition: %v", stream.Msg())
		}
		err = stream.Err()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("invalid definition: %v", err)
	}
}
