package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/flowgate/flowgate/backends/store"
	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
)

const orderRequest = "When a webhook receives an order over 100, POST it to https://example.com/orders"

func fieldOf(t *testing.T, err error) string {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("not a connect error: %v", err)
	}
	for _, d := range ce.Details() {
		if v, e := d.Value(); e == nil {
			if br, ok := v.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
				return br.GetFieldViolations()[0].GetField()
			}
		}
	}
	return ""
}

func TestCreateSessionValidates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	for _, tc := range []struct {
		req   *agentv1.CreateSessionRequest
		code  connect.Code
		field string
	}{
		{&agentv1.CreateSessionRequest{Action: "destroy"}, connect.CodeInvalidArgument, "action"},
		{&agentv1.CreateSessionRequest{}, connect.CodeInvalidArgument, "action"},
		{&agentv1.CreateSessionRequest{Action: "edit"}, connect.CodeInvalidArgument, "workflow_id"},
		{&agentv1.CreateSessionRequest{Action: "create", WorkflowId: "x"}, connect.CodeInvalidArgument, "workflow_id"},
		{&agentv1.CreateSessionRequest{Action: "edit", WorkflowId: "nope"}, connect.CodeNotFound, ""},
	} {
		_, err := e.client.CreateSession(t.Context(), connect.NewRequest(tc.req))
		if connect.CodeOf(err) != tc.code {
			t.Errorf("%v: got %v, want %v", tc.req, err, tc.code)
			continue
		}
		if tc.field != "" && fieldOf(t, err) != tc.field {
			t.Errorf("%v: field %q, want %q", tc.req, fieldOf(t, err), tc.field)
		}
	}
}

func TestChatGeneratesAndDeploys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	id := e.session(t, "acme")
	pieces := e.chat(t, "acme", id, orderRequest)
	if len(pieces) < 3 {
		t.Fatalf("reply came in %d pieces, want several: %q", len(pieces), pieces)
	}
	if reply := strings.Join(pieces, ""); !strings.Contains(reply, "https://example.com/orders") || !strings.Contains(reply, "amount") {
		t.Errorf("reply does not describe the plan: %q", reply)
	}
	events := e.watch(t, "acme", id, "", nil)
	got := strings.Join(types(events), " ")
	want := "waiting start draft debugging:validate:passed debugging:dry_run:skipped complete"
	if got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	var last int64
	for _, ev := range events {
		n, err := parseEventID(ev.GetEventId())
		if err != nil || n <= last {
			t.Errorf("event ids not increasing: %q after %d", ev.GetEventId(), last)
		}
		last = n
	}
	done := events[len(events)-1]
	dep := e.runtime.get(done.GetWorkflowId())
	if dep == nil {
		t.Fatalf("complete names %q, which the runtime does not have", done.GetWorkflowId())
	}
	if e.runtime.tenants[0] != "acme" {
		t.Errorf("runtime saw tenant %q, want acme", e.runtime.tenants[0])
	}
	var expr, url string
	for _, n := range dep.GetWorkflowDefinition().GetNodes() {
		switch n.GetType() {
		case "condition":
			expr = n.GetParameters().GetFields()["expression"].GetStringValue()
		case "http_request":
			url = n.GetParameters().GetFields()["url"].GetStringValue()
		}
	}
	if expr != "trigger.body.amount > 100" || url != "https://example.com/orders" {
		t.Errorf("deployed condition %q, url %q", expr, url)
	}
	if trig := dep.GetTriggers(); len(trig) != 1 || trig[0].GetType() != "webhook" || !strings.HasPrefix(trig[0].GetPath(), "orders-") {
		t.Errorf("triggers %v", trig)
	}

	// Resume after the draft: exactly the events after it, nothing twice.
	resumed := e.watch(t, "acme", id, events[2].GetEventId(), nil)
	if got := strings.Join(types(resumed), " "); got != "debugging:validate:passed debugging:dry_run:skipped complete" {
		t.Errorf("resumed events %q", got)
	}
	// Another tenant sees no such session.
	_, err := e.client.WatchGeneration(t.Context(), withTenant(&agentv1.WatchGenerationRequest{SessionId: id}, "other"))
	if err == nil {
		stream, _ := e.client.WatchGeneration(t.Context(), withTenant(&agentv1.WatchGenerationRequest{SessionId: id}, "other"))
		stream.Receive()
		err = stream.Err()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("other tenant: %v, want not found", err)
	}

	// A refinement updates the same deployment, keeping its webhook URL.
	e.chat(t, "acme", id, "make it over 250")
	more := e.watch(t, "acme", id, done.GetEventId(), nil)
	final := more[len(more)-1]
	if final.GetType() != eventComplete || final.GetWorkflowId() != done.GetWorkflowId() {
		t.Fatalf("refinement ended %v", types(more))
	}
	dep = e.runtime.get(done.GetWorkflowId())
	for _, n := range dep.GetWorkflowDefinition().GetNodes() {
		if n.GetType() == "condition" && n.GetParameters().GetFields()["expression"].GetStringValue() != "trigger.body.amount > 250" {
			t.Errorf("refined condition %v", n.GetParameters())
		}
	}
}

func TestUnplannableRequestAsks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	id := e.session(t, "")
	reply := strings.Join(e.chat(t, "", id, "send the orders to slack"), "")
	if !strings.Contains(reply, "URL") {
		t.Errorf("reply does not ask for the URL: %q", reply)
	}
	events := e.watch(t, "", id, "", func(ev *agentv1.WatchGenerationResponse) bool {
		return ev.GetData().GetFields()["question"] != nil
	})
	if got := strings.Join(types(events), " "); got != "waiting waiting" {
		t.Errorf("events %q, want two waiting events", got)
	}
	if e.runtime.n != 0 {
		t.Errorf("a workflow was deployed from an unplannable request")
	}
}

func TestChatValidates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	id := e.session(t, "")
	for _, tc := range []struct {
		req   *agentv1.ChatRequest
		code  connect.Code
		field string
	}{
		{&agentv1.ChatRequest{UserMessage: "hi"}, connect.CodeInvalidArgument, "session_id"},
		{&agentv1.ChatRequest{SessionId: id}, connect.CodeInvalidArgument, "user_message"},
		{&agentv1.ChatRequest{SessionId: id, UserMessage: strings.Repeat("x", maxUserMessage+1)}, connect.CodeInvalidArgument, "user_message"},
		{&agentv1.ChatRequest{SessionId: "unknown", UserMessage: "hi"}, connect.CodeNotFound, ""},
	} {
		stream, err := e.client.Chat(t.Context(), connect.NewRequest(tc.req))
		if err == nil {
			for stream.Receive() {
			}
			err = stream.Err()
		}
		if connect.CodeOf(err) != tc.code || (tc.field != "" && fieldOf(t, err) != tc.field) {
			t.Errorf("%v: got %v", tc.req.GetSessionId(), err)
		}
	}
	stream, err := e.client.WatchGeneration(t.Context(), connect.NewRequest(&agentv1.WatchGenerationRequest{SessionId: id, AfterEventId: "abc"}))
	if err == nil {
		stream.Receive()
		err = stream.Err()
	}
	if connect.CodeOf(err) != connect.CodeInvalidArgument || fieldOf(t, err) != "after_event_id" {
		t.Errorf("bad after_event_id: %v", err)
	}
}

func TestEditSessionAndDurability(t *testing.T) {
	t.Parallel()
	db, err := store.Open(context.Background(), store.Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	first := newEnv(t, envOptions{db: db})
	id := first.session(t, "")
	first.chat(t, "", id, orderRequest)
	events := first.watch(t, "", id, "", nil)
	depID := events[len(events)-1].GetWorkflowId()
	if err := first.svc.Close(); err != nil {
		t.Fatal(err)
	}

	// A new agent on the same database (a restart) still has the session,
	// and an edit session loads the deployed workflow from the runtime.
	second := newEnv(t, envOptions{db: db, runtime: first.runtime})
	if replay := second.watch(t, "", id, "", nil); len(replay) != len(events) {
		t.Errorf("after restart %d events, want %d", len(replay), len(events))
	}
	resp, err := second.client.CreateSession(t.Context(), connect.NewRequest(&agentv1.CreateSessionRequest{Action: "edit", WorkflowId: depID}))
	if err != nil {
		t.Fatal(err)
	}
	edit := resp.Msg.GetSessionId()
	second.chat(t, "", edit, "only when the amount is at least 500")
	edited := second.watch(t, "", edit, "", nil)
	if last := edited[len(edited)-1]; last.GetType() != eventComplete || last.GetWorkflowId() != depID {
		t.Fatalf("edit ended with %v", types(edited))
	}
	for _, n := range second.runtime.get(depID).GetWorkflowDefinition().GetNodes() {
		if n.GetType() == "http_request" && n.GetParameters().GetFields()["url"].GetStringValue() != "https://example.com/orders" {
			t.Errorf("edit lost the call: %v", n.GetParameters())
		}
		if n.GetType() == "condition" && n.GetParameters().GetFields()["expression"].GetStringValue() != "trigger.body.amount >= 500" {
			t.Errorf("edit did not change the condition: %v", n.GetParameters())
		}
	}
}
