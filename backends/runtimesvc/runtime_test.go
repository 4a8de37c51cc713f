package runtimesvc

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

const secret = "a-long-enough-webhook-secret"

// TestRuntime runs the same suite over SQLite and PostgreSQL.
func TestRuntime(t *testing.T) {
	t.Parallel()
	runOverBackends(t, map[string]storeTest{
		"deployments":     testDeployments,
		"webhook async":   testWebhookAsync,
		"webhook signed":  testWebhookSigned,
		"idempotency":     testIdempotency,
		"manual run":      testManualRun,
		"list executions": testListExecutions,
		"interrupted":     testInterrupted,
		"schedule claim":  testScheduleClaim,
		"persisted":       testPersisted,
	})
}

func createOrders(t *testing.T, s *Service, tenant, path string, trig *runtimev1.Trigger) *runtimev1.Deployment {
	t.Helper()
	if trig == nil {
		trig = &runtimev1.Trigger{Type: "webhook", Path: path}
	}
	res, err := s.CreateDeployment(t.Context(), req(tenant, &runtimev1.CreateDeploymentRequest{
		Name: "orders " + path, WorkflowDefinition: orderWorkflow(),
		Triggers: []*runtimev1.Trigger{trig, {Type: "manual"}},
	}))
	if err != nil {
		t.Fatalf("CreateDeployment: %v", err)
	}
	return res.Msg.GetDeployment()
}

func fieldOf(t *testing.T, err error) string {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("error %v, want InvalidArgument", err)
	}
	br, ok := errorDetail[*errdetails.BadRequest](err)
	if !ok || len(br.GetFieldViolations()) == 0 {
		t.Fatalf("no BadRequest detail in %v", err)
	}
	return br.GetFieldViolations()[0].GetField()
}

func testDeployments(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "acme", "orders/new", &runtimev1.Trigger{Type: "webhook", Path: "/orders/new/", Secret: secret, ResponseMode: "wait"})
	if ns, path, _ := strings.Cut(hookPath(t, d), "/"); len(ns) != 32 || path != "orders/new" || d.GetStatus() != "active" {
		t.Fatalf("deployment %v", d)
	}
	if tr := d.GetTriggers()[0]; tr.GetSecret() != "" || !tr.GetHasSecret() {
		t.Fatalf("secret leaked or has_secret unset: %v", tr)
	}
	// The same path is taken within the tenant.
	_, err := s.CreateDeployment(ctx, req("acme", &runtimev1.CreateDeploymentRequest{
		Name: "dup", WorkflowDefinition: orderWorkflow(), Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "orders/new"}},
	}))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("duplicate path: %v", err)
	}
	// Validation errors name the field; engine errors keep their path.
	bad := orderWorkflow()
	bad.Nodes[1].Type = "teleport"
	_, err = s.CreateDeployment(ctx, req("acme", &runtimev1.CreateDeploymentRequest{Name: "bad", WorkflowDefinition: bad, Triggers: []*runtimev1.Trigger{{Type: "manual"}}}))
	if f := fieldOf(t, err); f != "workflow_definition.nodes[1].type" {
		t.Fatalf("field %q", f)
	}
	for want, trig := range map[string]*runtimev1.Trigger{
		"triggers[0].type":             {Type: "email"},
		"triggers[0].path":             {Type: "webhook", Path: "a b"},
		"triggers[0].secret":           {Type: "webhook", Path: "short", Secret: "x"},
		"triggers[0].response_mode":    {Type: "webhook", Path: "m", ResponseMode: "later"},
		"triggers[0].cron":             {Type: "schedule", Cron: "every tuesday"},
		"triggers[0].response_timeout": {Type: "webhook", Path: "t", ResponseMode: "wait", ResponseTimeout: durationpb.New(time.Hour)},
	} {
		_, err := s.CreateDeployment(ctx, req("acme", &runtimev1.CreateDeploymentRequest{Name: "bad", WorkflowDefinition: orderWorkflow(), Triggers: []*runtimev1.Trigger{trig}}))
		if f := fieldOf(t, err); f != want {
			t.Errorf("trigger %v: field %q, want %q", trig, f, want)
		}
	}
	_, err = s.CreateDeployment(ctx, req("acme", &runtimev1.CreateDeploymentRequest{WorkflowDefinition: orderWorkflow(), Triggers: []*runtimev1.Trigger{{Type: "manual"}}}))
	if f := fieldOf(t, err); f != "name" {
		t.Fatalf("field %q", f)
	}
	// Another tenant sees nothing.
	if _, err := s.GetDeployment(ctx, req("other", &runtimev1.GetDeploymentRequest{DeploymentId: d.GetDeploymentId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("cross-tenant get: %v", err)
	}
	if _, err := s.DeleteDeployment(ctx, req("other", &runtimev1.DeleteDeploymentRequest{DeploymentId: d.GetDeploymentId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("cross-tenant delete: %v", err)
	}
	// Update keeps the secret when none is sent, and can pause.
	up, err := s.UpdateDeployment(ctx, req("acme", &runtimev1.UpdateDeploymentRequest{
		DeploymentId: d.GetDeploymentId(), Name: "renamed", WorkflowDefinition: orderWorkflow(), Status: "paused",
		Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "orders/v2", ResponseMode: "wait"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if u := up.Msg.GetDeployment(); u.GetName() != "renamed" || u.GetStatus() != "paused" || !u.GetTriggers()[0].GetHasSecret() ||
		!u.GetUpdatedAt().AsTime().After(u.GetCreatedAt().AsTime()) || u.GetWebhookUrl() != strings.TrimSuffix(d.GetWebhookUrl(), "orders/new")+"orders/v2" {
		t.Fatalf("updated %v", u)
	}
	// The old path is free again.
	createOrders(t, s, "acme", "orders/new", nil)
	// Listing pages, newest first.
	for i := range 4 {
		createOrders(t, s, "lister", fmt.Sprintf("list/%d", i), nil)
	}
	page, err := s.ListDeployments(ctx, req("lister", &runtimev1.ListDeploymentsRequest{PageSize: 3}))
	if err != nil {
		t.Fatal(err)
	}
	if got := page.Msg; got.GetTotalCount() != 4 || len(got.GetDeployments()) != 3 || got.GetNextPageToken() == "" || got.GetDeployments()[0].GetName() != "orders list/3" {
		t.Fatalf("page 1: %v", got)
	}
	next, err := s.ListDeployments(ctx, req("lister", &runtimev1.ListDeploymentsRequest{PageSize: 3, PageToken: page.Msg.GetNextPageToken()}))
	if err != nil || len(next.Msg.GetDeployments()) != 1 || next.Msg.GetDeployments()[0].GetName() != "orders list/0" || next.Msg.GetNextPageToken() != "" || next.Msg.GetPage() != 2 {
		t.Fatalf("page 2: %v %v", next.Msg, err)
	}
	// Delete frees the path and hides the deployment.
	if _, err := s.DeleteDeployment(ctx, req("acme", &runtimev1.DeleteDeploymentRequest{DeploymentId: d.GetDeploymentId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetDeployment(ctx, req("acme", &runtimev1.GetDeploymentRequest{DeploymentId: d.GetDeploymentId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("after delete: %v", err)
	}
	createOrders(t, s, "acme", "orders/v2", nil)
}

func testWebhookAsync(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "", "async", nil)
	path := hookPath(t, d)
	body := []byte(`{"id":"o-1","total":250}`)
	wreq := webhookReq(path, body, map[string]string{"x-source": "test"})
	wreq.Msg.Query = map[string]string{"ref": "abc"}
	res, err := s.TriggerWebhook(ctx, wreq)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]string
	if err := json.Unmarshal(res.Msg.GetBody().GetData(), &doc); err != nil || doc["execution_id"] == "" || doc["status"] != "running" ||
		res.Msg.GetStatusCode() != 202 || res.Msg.GetBody().GetContentType() != "application/json" {
		t.Fatalf("async response %v (%v)", res.Msg, err)
	}
	var e *runtimev1.Execution
	eventually(t, "the execution to finish", func() bool {
		got, err := s.GetExecution(ctx, req("", &runtimev1.GetExecutionRequest{ExecutionId: doc["execution_id"]}))
		if err != nil {
			t.Fatal(err)
		}
		e = got.Msg.GetExecution()
		return e.GetStatus() != "running"
	})
	td := e.GetTriggerData().AsMap()
	if e.GetStatus() != "succeeded" || e.GetDeploymentId() != d.GetDeploymentId() || e.GetTriggerType() != "webhook" ||
		td["body"].(map[string]any)["total"] != 250.0 || td["headers"].(map[string]any)["x-source"] != "test" || td["query"].(map[string]any)["ref"] != "abc" ||
		len(e.GetNodeResults()) != 4 || e.GetFinishedAt() == nil {
		t.Fatalf("execution %v", e)
	}
	// Unknown path, malformed JSON.
	if _, err := s.TriggerWebhook(ctx, webhookReq("nope", body, nil)); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("unknown path: %v", err)
	}
	if _, err := s.TriggerWebhook(ctx, webhookReq(path, []byte("{"), nil)); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("bad JSON: %v", err)
	}
}

func countExecutions(t *testing.T, s *Service, tenant, dep string) int32 {
	t.Helper()
	res, err := s.ListExecutions(t.Context(), req(tenant, &runtimev1.ListExecutionsRequest{DeploymentId: dep}))
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetTotalCount()
}

func testWebhookSigned(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "acme", "signed", &runtimev1.Trigger{Type: "webhook", Path: "signed", Secret: secret, ResponseMode: "wait", ResponseTimeout: durationpb.New(10 * time.Second)})
	path := hookPath(t, d)
	body := []byte(`{"id":"o-9", "total": 500}`)
	now := time.Now()
	bad := map[string]map[string]string{
		"unsigned":        nil,
		"wrong secret":    signedHeaders("another-secret-of-length", body, now),
		"stale timestamp": signedHeaders(secret, body, now.Add(-10*time.Minute)),
		"future":          signedHeaders(secret, body, now.Add(10*time.Minute)),
		"garbage":         {headerTimestamp: "soon", headerSignature: "sha256=zz"},
	}
	for name, h := range bad {
		if _, err := s.TriggerWebhook(ctx, webhookReq(path, body, h)); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// A body changed by one byte after signing fails too.
	h := signedHeaders(secret, body, now)
	if _, err := s.TriggerWebhook(ctx, webhookReq(path, append([]byte(nil), append(body, ' ')...), h)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("tampered body: %v", err)
	}
	if n := countExecutions(t, s, "acme", d.GetDeploymentId()); n != 0 {
		t.Fatalf("%d executions ran for rejected requests", n)
	}
	res, err := s.TriggerWebhook(ctx, webhookReq(path, body, h))
	if err != nil {
		t.Fatal(err)
	}
	m := res.Msg
	if m.GetStatusCode() != 201 || m.GetHeaders()["x-tier"] != "gold" || m.GetBody().GetContentType() != "application/json" ||
		string(m.GetBody().GetData()) != `{"order":"o-9","tier":"gold"}` && string(m.GetBody().GetData()) != `{"order":"o-9", "tier":"gold"}` ||
		m.GetStatus() != "succeeded" && m.GetStatus() != "running" { // answered when the respond node ran, maybe before the run ended
		t.Fatalf("wait response %v body %s", m, m.GetBody().GetData())
	}
	small := []byte(`{"total": 5}`)
	res, err = s.TriggerWebhook(ctx, webhookReq(path, small, signedHeaders(secret, small, now)))
	if err != nil || string(res.Msg.GetBody().GetData()) != "thanks" || res.Msg.GetStatusCode() != 200 || res.Msg.GetBody().GetContentType() != "text/plain; charset=utf-8" {
		t.Fatalf("small order: %v %v", res, err)
	}
}

func testIdempotency(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "", "idem", &runtimev1.Trigger{Type: "webhook", Path: "idem", ResponseMode: "wait"})
	path := hookPath(t, d)
	body := []byte(`{"total": 101, "id": "x"}`)
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		ids = map[string]int{}
	)
	for range 5 {
		wg.Go(func() {
			res, err := s.TriggerWebhook(ctx, webhookReq(path, body, map[string]string{headerIdempotency: "key-1"}))
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[res.Msg.GetExecutionId()]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(ids) != 1 {
		t.Fatalf("one key started executions %v", ids)
	}
	// A retry after it finished returns the same response. (The first
	// answer came when the respond node ran, maybe before the run ended.)
	for id := range ids {
		eventually(t, "the run to end", func() bool { return getExec(t, s, id).GetStatus() != statusRunning })
	}
	res, err := s.TriggerWebhook(ctx, webhookReq(path, body, map[string]string{headerIdempotency: "key-1"}))
	if err != nil || res.Msg.GetStatusCode() != 201 || ids[res.Msg.GetExecutionId()] == 0 {
		t.Fatalf("replay %v %v", res, err)
	}
	if _, err := s.TriggerWebhook(ctx, webhookReq(path, body, map[string]string{headerIdempotency: "key-2"})); err != nil {
		t.Fatal(err)
	}
	if n := countExecutions(t, s, "", d.GetDeploymentId()); n != 2 {
		t.Fatalf("%d executions, want 2", n)
	}
}

func testManualRun(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "acme", "manual", nil)
	res, err := s.RunDeployment(ctx, req("acme", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 30}))
	if err != nil {
		t.Fatal(err)
	}
	// trigger.body is missing, so the condition cannot compare: a failed run, recorded.
	e := res.Msg.GetExecution()
	if e.GetTriggerType() != "manual" || e.GetStatus() != "failed" || e.GetError() == "" || len(e.GetNodeResults()) == 0 {
		t.Fatalf("manual run %v", e)
	}
	if _, err := s.RunDeployment(ctx, req("other", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("cross-tenant run: %v", err)
	}
	got, err := s.GetExecution(ctx, req("other", &runtimev1.GetExecutionRequest{ExecutionId: e.GetExecutionId()}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("cross-tenant execution read: %v %v", got, err)
	}
}

func testPersisted(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := createOrders(t, s, "", "persist", nil)
	res, err := s.RunDeployment(t.Context(), req("", &runtimev1.RunDeploymentRequest{DeploymentId: d.GetDeploymentId(), WaitSeconds: 30}))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	// A new process over the same database sees everything.
	s2 := newService(t, db, eng, nil)
	if _, err := s2.GetDeployment(t.Context(), req("", &runtimev1.GetDeploymentRequest{DeploymentId: d.GetDeploymentId()})); err != nil {
		t.Fatal(err)
	}
	got, err := s2.GetExecution(t.Context(), req("", &runtimev1.GetExecutionRequest{ExecutionId: res.Msg.GetExecution().GetExecutionId()}))
	if err != nil || got.Msg.GetExecution().GetStatus() != res.Msg.GetExecution().GetStatus() {
		t.Fatalf("after restart: %v %v", got, err)
	}
}

// testInterrupted leaves an execution running in a service that "dies"
// (its ownership vanishes without Close) and checks the next start marks it.
func testInterrupted(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	d := createOrders(t, s, "", "crash", nil)
	dep, err := s.repo.getDeployment(t.Context(), testTenant, d.GetDeploymentId())
	if err != nil {
		t.Fatal(err)
	}
	e := &execution{id: "00000000-dead-7000-8000-000000000001", tenant: testTenant, deploymentID: dep.id, status: statusRunning, triggerType: "manual", startedAt: time.Now().UTC()}
	if err := s.repo.insertExecution(t.Context(), newExecution{e: e, owner: "process-that-died"}); err != nil {
		t.Fatal(err)
	}
	s2 := newService(t, db, eng, nil)
	got, err := s2.GetExecution(t.Context(), req("", &runtimev1.GetExecutionRequest{ExecutionId: e.id}))
	if err != nil || got.Msg.GetExecution().GetStatus() != statusInterrupted || got.Msg.GetExecution().GetFinishedAt() == nil {
		t.Fatalf("after restart: %v %v", got, err)
	}
	// A live owner's executions are left alone (PostgreSQL tracks owners).
	if db.Dialect() == store.Postgres {
		live := &execution{id: "00000000-1111-7000-8000-000000000002", tenant: testTenant, deploymentID: dep.id, status: statusRunning, triggerType: "manual", startedAt: time.Now().UTC()}
		if err := s.repo.insertExecution(t.Context(), newExecution{e: live, owner: s.instance}); err != nil {
			t.Fatal(err)
		}
		if err := s2.sweepInterrupted(t.Context()); err != nil {
			t.Fatal(err)
		}
		got, _ := s2.GetExecution(t.Context(), req("", &runtimev1.GetExecutionRequest{ExecutionId: live.id}))
		if got.Msg.GetExecution().GetStatus() != statusRunning {
			t.Fatalf("a live owner's execution was marked %q", got.Msg.GetExecution().GetStatus())
		}
	}
}

// testScheduleClaim fires the same tick from two replicas sharing the
// database: exactly one execution runs.
func testScheduleClaim(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	noSched := func(c *Config) { c.DisableScheduler = true }
	a, b := newService(t, db, eng, noSched), newService(t, db, eng, noSched)
	res, err := a.CreateDeployment(t.Context(), req("", &runtimev1.CreateDeploymentRequest{
		Name: "nightly", WorkflowDefinition: &enginev1.WorkflowDefinition{Nodes: []*enginev1.Node{node("start", "trigger", nil)}},
		Triggers: []*runtimev1.Trigger{{Type: "schedule", Cron: "0 3 * * *"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetDeployment().GetDeploymentId()
	tick := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	var wg sync.WaitGroup
	for _, s := range []*Service{a, b, a, b} {
		sc := &scheduler{s: s}
		wg.Go(func() { sc.fire(t.Context(), id, testTenant, tick) })
	}
	wg.Wait()
	if n := countExecutions(t, a, "", id); n != 1 {
		t.Fatalf("%d executions for one tick, want 1", n)
	}
	// The scheduler computes the same ticks everywhere and fires when due.
	sc := &scheduler{s: a}
	sc.sync(t.Context())
	entry := sc.entries[id]
	if entry == nil || entry.next.Hour() != 3 || entry.next.Minute() != 0 {
		t.Fatalf("schedule entry %+v", entry)
	}
	entry.next = tick.Add(24 * time.Hour)
	sc.fireDue(t.Context(), entry.next.Add(time.Second))
	eventually(t, "the second tick's execution", func() bool { return countExecutions(t, a, "", id) == 2 })
}
