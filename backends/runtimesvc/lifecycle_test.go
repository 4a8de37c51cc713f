package runtimesvc

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowgate/flowgate/backends/engine"
	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// TestLifecycle runs the execution lifecycle suite over SQLite and
// PostgreSQL: run timeouts, progress, early respond, interrupted keys,
// manual waits, cancel, retry, versions, failure notifications, pauses.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	runOverBackends(t, map[string]storeTest{
		"run timeout":          testRunTimeout,
		"early respond":        testEarlyRespond,
		"interrupted key":      testInterruptedKey,
		"manual wait":          testManualWait,
		"cancel and retry":     testCancelRetry,
		"versions":             testVersions,
		"paused webhook":       testPausedWebhook,
		"failure notification": testFailureNotification,
		"cancel on a replica":  testCancelOnReplica,
		"derived run timeout":  testDerivedRunTimeout,
		"error workflow":       testErrorWorkflow,
	})
}

// ackThenWait answers the webhook at once with 202 {"ok": true}, then waits
// for delay and sets a last value.
func ackThenWait(delay string) *enginev1.WorkflowDefinition {
	return &enginev1.WorkflowDefinition{
		Name: "ack then wait",
		Nodes: []*enginev1.Node{
			node("start", "trigger", nil),
			node("first", "set", map[string]any{"values": map[string]any{"step": 1}}),
			node("ack", "respond", map[string]any{"status_code": 202, "body": map[string]any{"ok": true}}),
			node("wait", "delay", map[string]any{"duration": delay}),
			node("last", "set", map[string]any{"values": map[string]any{"step": 2}}),
		},
		Connections: []*enginev1.Connection{
			{Source: "start", Target: "first"}, {Source: "first", Target: "ack"},
			{Source: "ack", Target: "wait"}, {Source: "wait", Target: "last"},
		},
	}
}

// slowCall calls a local server that answers after d.
func slowCall(t *testing.T, d time.Duration) *enginev1.WorkflowDefinition {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	return &enginev1.WorkflowDefinition{
		Name: "slow call",
		Nodes: []*enginev1.Node{
			node("start", "trigger", nil),
			node("call", "http_request", map[string]any{"method": "GET", "url": srv.URL}),
		},
		Connections: []*enginev1.Connection{{Source: "start", Target: "call"}},
	}
}

func deploy(t *testing.T, s *Service, r *runtimev1.CreateDeploymentRequest) *runtimev1.Deployment {
	t.Helper()
	if r.Name == "" {
		r.Name = "lifecycle"
	}
	res, err := s.CreateDeployment(t.Context(), req("", r))
	if err != nil {
		t.Fatalf("CreateDeployment: %v", err)
	}
	return res.Msg.GetDeployment()
}

func getExec(t *testing.T, s *Service, id string) *runtimev1.Execution {
	t.Helper()
	res, err := s.GetExecution(t.Context(), req("", &runtimev1.GetExecutionRequest{ExecutionId: id}))
	if err != nil {
		t.Fatalf("GetExecution %s: %v", id, err)
	}
	return res.Msg.GetExecution()
}

func nodeStatuses(e *runtimev1.Execution) map[string]string {
	out := map[string]string{}
	for _, n := range e.GetNodeResults() {
		out[n.GetNodeId()] = n.GetStatus()
	}
	return out
}

func manual() []*runtimev1.Trigger { return []*runtimev1.Trigger{{Type: "manual"}} }

func testRunTimeout(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	// The runtime's own default deadline is short; a deployment's
	// run_timeout must replace it for its runs.
	open := engineClientWith(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	s := newService(t, db, open, func(c *Config) { c.RunTimeout = 300 * time.Millisecond; c.MaxRunTimeout = time.Minute })
	wf := ackThenWait("1s")
	_, err := s.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{
		Name: "too short", WorkflowDefinition: wf, Triggers: manual(), RunTimeout: durationpb.New(time.Second),
	}))
	if f := fieldOf(t, err); f != "run_timeout" {
		t.Fatalf("a run_timeout the delays do not fit in: field %q", f)
	}
	_, err = s.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{
		Name: "too long", WorkflowDefinition: wf, Triggers: manual(), RunTimeout: durationpb.New(2 * time.Minute),
	}))
	if f := fieldOf(t, err); f != "run_timeout" {
		t.Fatalf("a run_timeout over the maximum: field %q", f)
	}
	fits := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: wf, Triggers: manual(), RunTimeout: durationpb.New(5 * time.Second)})
	if fits.GetRunTimeout().AsDuration() != 5*time.Second {
		t.Fatalf("run_timeout not kept: %v", fits.GetRunTimeout())
	}
	// A deployment with no run_timeout runs under the runtime's default: an
	// HTTP call slower than it times out, while delays longer than it are
	// given the time they need.
	plain := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: slowCall(t, 2*time.Second), Triggers: manual()})
	delays := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: wf, Triggers: manual()})
	for dep, want := range map[string]string{fits.GetDeploymentId(): "succeeded", plain.GetDeploymentId(): "timed_out", delays.GetDeploymentId(): "succeeded"} {
		res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: dep, WaitSeconds: 20}))
		if err != nil || res.Msg.GetExecution().GetStatus() != want {
			t.Fatalf("run of %s: %v %v, want %s", dep, res, err, want)
		}
	}
}

func testEarlyRespond(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := deploy(t, s, &runtimev1.CreateDeploymentRequest{
		WorkflowDefinition: ackThenWait("1500ms"),
		Triggers:           []*runtimev1.Trigger{{Type: "webhook", Path: "ack", ResponseMode: "wait", ResponseTimeout: durationpb.New(10 * time.Second)}},
	})
	begun := time.Now()
	res, err := s.TriggerWebhook(t.Context(), webhookReq(hookPath(t, d), []byte(`{}`), nil))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(begun); took > time.Second {
		t.Fatalf("the respond node's answer took %v: it waited for the delay", took)
	}
	m := res.Msg
	if m.GetStatusCode() != 202 || string(m.GetBody().GetData()) != `{"ok":true}` || m.GetStatus() != "running" {
		t.Fatalf("early answer %v", m)
	}
	// The record shows the nodes that finished while the rest runs.
	e := getExec(t, s, m.GetExecutionId())
	if st := nodeStatuses(e); e.GetStatus() != "running" || st["start"] != "succeeded" || st["ack"] != "succeeded" || st["last"] != "" {
		t.Fatalf("running execution %s with nodes %v", e.GetStatus(), st)
	}
	eventually(t, "the run to end", func() bool { return getExec(t, s, m.GetExecutionId()).GetStatus() != "running" })
	e = getExec(t, s, m.GetExecutionId())
	if st := nodeStatuses(e); e.GetStatus() != "succeeded" || len(e.GetNodeResults()) != 5 || st["last"] != "succeeded" {
		t.Fatalf("finished execution %s with nodes %v", e.GetStatus(), st)
	}
}

// testInterruptedKey: an execution cut by a shutdown ends interrupted with
// the nodes that had finished; its Idempotency-Key then starts a new
// attempt, in both response modes.
func testInterruptedKey(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	for _, mode := range []string{"async", "wait"} {
		s := newService(t, db, eng, nil)
		d := deploy(t, s, &runtimev1.CreateDeploymentRequest{
			WorkflowDefinition: ackThenWait("30s"),
			Triggers:           []*runtimev1.Trigger{{Type: "webhook", Path: "key-" + mode, ResponseMode: mode}},
		})
		body := []byte(`{"n": 1}`)
		headers := map[string]string{headerIdempotency: "order-7"}
		first, err := s.TriggerWebhook(t.Context(), webhookReq(hookPath(t, d), body, headers))
		if err != nil {
			t.Fatal(err)
		}
		firstID := first.Msg.GetExecutionId()
		eventually(t, "the first nodes", func() bool { return nodeStatuses(getExec(t, s, firstID))["ack"] == "succeeded" })
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		_ = s.Shutdown(ctx)
		cancel()

		s2 := newService(t, db, eng, nil)
		old := getExec(t, s2, firstID)
		if st := nodeStatuses(old); old.GetStatus() != statusInterrupted || st["first"] != "succeeded" || st["ack"] != "succeeded" || st["last"] == "succeeded" {
			t.Fatalf("%s: interrupted execution %s with nodes %v", mode, old.GetStatus(), st)
		}
		again, err := s2.TriggerWebhook(t.Context(), webhookReq(hookPath(t, d), body, headers))
		if err != nil {
			t.Fatalf("%s: retry with the same key: %v", mode, err)
		}
		if again.Msg.GetExecutionId() == firstID || again.Msg.GetStatus() != "running" || again.Msg.GetStatusCode() != 202 {
			t.Fatalf("%s: retry answered %v, want a new running attempt", mode, again.Msg)
		}
		if got := getExec(t, s2, again.Msg.GetExecutionId()); got.GetRetryOf() != firstID {
			t.Fatalf("%s: retry_of = %q, want %q", mode, got.GetRetryOf(), firstID)
		}
		// The key now belongs to the new attempt.
		replay, err := s2.TriggerWebhook(t.Context(), webhookReq(hookPath(t, d), body, headers))
		if err != nil || replay.Msg.GetExecutionId() != again.Msg.GetExecutionId() {
			t.Fatalf("%s: replay %v %v", mode, replay, err)
		}
	}
}

func testManualWait(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: ackThenWait("2s"), Triggers: manual()})
	begun := time.Now()
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId()}))
	if err != nil || res.Msg.GetExecution().GetStatus() != "running" || res.Msg.GetExecution().GetExecutionId() == "" || time.Since(begun) > 1500*time.Millisecond {
		t.Fatalf("run without waiting: %v %v after %v", res, err, time.Since(begun))
	}
	res, err = s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 20}))
	if err != nil || res.Msg.GetExecution().GetStatus() != "succeeded" || len(res.Msg.GetExecution().GetNodeResults()) != 5 {
		t.Fatalf("run waiting 20s: %v %v", res, err)
	}
	for _, w := range []int32{-1, maxRunWait + 1} {
		_, err = s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: w}))
		if f := fieldOf(t, err); f != "wait_seconds" {
			t.Fatalf("wait_seconds %d: field %q", w, f)
		}
	}
}

func testCancelRetry(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: ackThenWait("30s"), Triggers: manual()})
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId()}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetExecution().GetExecutionId()
	eventually(t, "the delay to start", func() bool { return nodeStatuses(getExec(t, s, id))["ack"] == "succeeded" })
	if _, err := s.RetryExecution(t.Context(), req("", &runtimev1.RetryExecutionRequest{ExecutionId: id})); connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("retry of a running execution: %v", err)
	}
	if _, err := s.CancelExecution(t.Context(), req("other", &runtimev1.CancelExecutionRequest{ExecutionId: id})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("cancel from another tenant: %v", err)
	}
	begun := time.Now()
	c, err := s.CancelExecution(t.Context(), req("", &runtimev1.CancelExecutionRequest{ExecutionId: id}))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Msg.GetExecution()
	if st := nodeStatuses(e); e.GetStatus() != "canceled" || st["ack"] != "succeeded" || st["last"] == "succeeded" || time.Since(begun) > 5*time.Second {
		t.Fatalf("canceled execution %s with nodes %v", e.GetStatus(), st)
	}
	if _, err := s.CancelExecution(t.Context(), req("", &runtimev1.CancelExecutionRequest{ExecutionId: id})); connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("second cancel: %v", err)
	}
	r, err := s.RetryExecution(t.Context(), req("", &runtimev1.RetryExecutionRequest{ExecutionId: id}))
	if err != nil {
		t.Fatal(err)
	}
	retry := r.Msg.GetExecution()
	if retry.GetExecutionId() == id || retry.GetRetryOf() != id || retry.GetStatus() != "running" || retry.GetTriggerType() != "manual" {
		t.Fatalf("retry %v", retry)
	}
	if _, err := s.CancelExecution(t.Context(), req("", &runtimev1.CancelExecutionRequest{ExecutionId: retry.GetExecutionId()})); err != nil {
		t.Fatalf("cancel of the retry: %v", err)
	}
}

func testVersions(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: ackThenWait("10ms"), Triggers: manual()})
	update := func(wf *enginev1.WorkflowDefinition, name string) *runtimev1.Deployment {
		t.Helper()
		res, err := s.UpdateDeployment(t.Context(), req("", &runtimev1.UpdateDeploymentRequest{
			DeploymentId: d.GetDeploymentId(), Name: name, WorkflowDefinition: wf, Triggers: manual(),
		}))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg.GetDeployment()
	}
	if d.GetVersion() != 1 {
		t.Fatalf("new deployment at version %d", d.GetVersion())
	}
	if got := update(ackThenWait("10ms"), "renamed"); got.GetVersion() != 1 {
		t.Fatalf("a rename made version %d", got.GetVersion())
	}
	if got := update(ackThenWait("20ms"), "renamed"); got.GetVersion() != 2 {
		t.Fatalf("a new definition made version %d", got.GetVersion())
	}
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 10}))
	if err != nil || res.Msg.GetExecution().GetDeploymentVersion() != 2 {
		t.Fatalf("execution of version 2: %v %v", res, err)
	}
	list, err := s.ListDeploymentVersions(t.Context(), req("", &runtimev1.ListDeploymentVersionsRequest{DeploymentId: d.GetDeploymentId()}))
	if err != nil {
		t.Fatal(err)
	}
	vs := list.Msg.GetVersions()
	if list.Msg.GetTotalCount() != 2 || len(vs) != 2 || vs[0].GetVersion() != 2 || vs[1].GetVersion() != 1 ||
		vs[0].GetWorkflowDefinition().GetNodes()[3].GetParameters().GetFields()["duration"].GetStringValue() != "20ms" {
		t.Fatalf("versions %v", list.Msg)
	}
	if _, err := s.ListDeploymentVersions(t.Context(), req("other", &runtimev1.ListDeploymentVersionsRequest{DeploymentId: d.GetDeploymentId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("versions from another tenant: %v", err)
	}
}

func testPausedWebhook(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := createOrders(t, s, "", "paused", nil)
	_, err := s.UpdateDeployment(t.Context(), req("", &runtimev1.UpdateDeploymentRequest{
		DeploymentId: d.GetDeploymentId(), Name: d.GetName(), WorkflowDefinition: d.GetWorkflowDefinition(), Triggers: d.GetTriggers(), Status: "paused",
	}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.TriggerWebhook(t.Context(), webhookReq(hookPath(t, d), []byte(`{}`), nil))
	if connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("webhook of a paused deployment: %v, want Aborted (409)", err)
	}
}

// testFailureNotification: a failed execution is posted to on_failure's
// URL by the engine, under the engine's destination rules: a loopback
// receiver gets it only from an engine that allows loopback.
func testFailureNotification(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	got := make(chan map[string]any, 4)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var doc map[string]any
		data, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(data, &doc)
		got <- doc
	}))
	t.Cleanup(receiver.Close)
	failing := orderWorkflow() // fails without a body: the condition cannot compare
	create := func(s *Service) string {
		_, err := s.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{
			Name: "bad url", WorkflowDefinition: failing, Triggers: manual(), OnFailure: &runtimev1.OnFailure{WebhookUrl: "ftp://x"},
		}))
		if f := fieldOf(t, err); f != "on_failure.webhook_url" {
			t.Fatalf("ftp on_failure URL: field %q", f)
		}
		d := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: failing, Triggers: manual(), OnFailure: &runtimev1.OnFailure{WebhookUrl: receiver.URL + "/failed"}})
		res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 10}))
		if err != nil || res.Msg.GetExecution().GetStatus() != "failed" {
			t.Fatalf("failing run: %v %v", res, err)
		}
		return res.Msg.GetExecution().GetExecutionId()
	}
	// The default engine refuses loopback destinations.
	guarded := newService(t, db, eng, nil)
	create(guarded)
	_ = guarded.Close() // waits for the notification attempt
	select {
	case doc := <-got:
		t.Fatalf("a loopback receiver got a notification through a guarded engine: %v", doc)
	default:
	}
	open := newService(t, db, engineClientWith(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}}), nil)
	id := create(open)
	select {
	case doc := <-got:
		if doc["execution_id"] != id || doc["status"] != "failed" || doc["error"] == "" {
			t.Fatalf("notification %v", doc)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no failure notification")
	}
}

// testCancelOnReplica: a cancellation that reaches a replica not running
// the execution stops it on the one that does.
func testCancelOnReplica(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	fast := func(c *Config) { c.CancelPoll = 50 * time.Millisecond; c.DisableScheduler = true }
	a, b := newService(t, db, eng, fast), newService(t, db, eng, fast)
	d := deploy(t, a, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: ackThenWait("30s"), Triggers: manual()})
	res, err := a.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId()}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetExecution().GetExecutionId()
	eventually(t, "the delay to start", func() bool { return nodeStatuses(getExec(t, a, id))["ack"] == "succeeded" })
	c, err := b.CancelExecution(t.Context(), req("", &runtimev1.CancelExecutionRequest{ExecutionId: id}))
	if err != nil {
		t.Fatal(err)
	}
	if e := c.Msg.GetExecution(); e.GetStatus() != "canceled" || nodeStatuses(e)["ack"] != "succeeded" {
		t.Fatalf("canceled through another replica: %v", e)
	}
}

// testDerivedRunTimeout: a deployment without run_timeout gets its delays
// plus a minute, capped by the longest run allowed, not a runtime default
// shorter than its delays; delays that cannot fit in the longest run
// allowed are refused.
func testDerivedRunTimeout(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, func(c *Config) { c.RunTimeout = 300 * time.Millisecond; c.MaxRunTimeout = 3 * time.Second })
	d := deploy(t, s, &runtimev1.CreateDeploymentRequest{WorkflowDefinition: ackThenWait("1s"), Triggers: manual()})
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 20}))
	if err != nil || res.Msg.GetExecution().GetStatus() != "succeeded" {
		t.Fatalf("run with a 1s delay: %v %v", res, err)
	}
	_, err = s.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{Name: "long", WorkflowDefinition: ackThenWait("4s"), Triggers: manual()}))
	if f := fieldOf(t, err); f != "workflow_definition" {
		t.Fatalf("delays over the longest run: field %q", f)
	}
}

// testErrorWorkflow: a failed execution runs the deployment's error
// workflow with the failure as trigger data; the error workflow's own
// failures trigger nothing.
func testErrorWorkflow(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	// The error workflow fails too (its trigger data has no body).
	handler := deploy(t, s, &runtimev1.CreateDeploymentRequest{Name: "on failure", WorkflowDefinition: orderWorkflow(), Triggers: manual()})
	for name, of := range map[string]*runtimev1.OnFailure{
		"on_failure":               {},
		"on_failure.deployment_id": {DeploymentId: "no-such-deployment"},
	} {
		_, err := s.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{Name: "x", WorkflowDefinition: orderWorkflow(), Triggers: manual(), OnFailure: of}))
		if f := fieldOf(t, err); f != name {
			t.Fatalf("on_failure %v: field %q, want %q", of, f, name)
		}
	}
	failing := deploy(t, s, &runtimev1.CreateDeploymentRequest{
		WorkflowDefinition: orderWorkflow(), Triggers: manual(), OnFailure: &runtimev1.OnFailure{DeploymentId: handler.GetDeploymentId()},
	})
	// The two name each other: only the first failure may start anything.
	if _, err := s.UpdateDeployment(t.Context(), req("", &runtimev1.UpdateDeploymentRequest{
		DeploymentId: handler.GetDeploymentId(), Name: handler.GetName(), WorkflowDefinition: orderWorkflow(), Triggers: manual(),
		OnFailure: &runtimev1.OnFailure{DeploymentId: failing.GetDeploymentId()},
	})); err != nil {
		t.Fatal(err)
	}
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: failing.GetDeploymentId(), WaitSeconds: 10}))
	if err != nil || res.Msg.GetExecution().GetStatus() != "failed" {
		t.Fatalf("failing run: %v %v", res, err)
	}
	failed := res.Msg.GetExecution().GetExecutionId()
	var runs []*runtimev1.Execution
	eventually(t, "the error workflow's execution to end", func() bool {
		list, err := s.ListExecutions(t.Context(), req("", &runtimev1.ListExecutionsRequest{DeploymentId: handler.GetDeploymentId()}))
		runs = list.Msg.GetExecutions()
		return err == nil && len(runs) == 1 && runs[0].GetStatus() != "running"
	})
	if runs[0].GetTriggerType() != "on_failure" || runs[0].GetTriggerData().GetFields()["execution_id"].GetStringValue() != failed {
		t.Fatalf("error workflow run %v", runs[0])
	}
	_ = s.Close() // lets anything the error workflow's failure could start begin
	if n, m := countExecutions(t, s, "", handler.GetDeploymentId()), countExecutions(t, s, "", failing.GetDeploymentId()); n != 1 || m != 1 {
		t.Fatalf("the error workflow ran %d times, the failing deployment %d times", n, m)
	}
}
