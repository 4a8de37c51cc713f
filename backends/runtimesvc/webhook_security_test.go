package runtimesvc

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// TestWebhookSecurity runs the webhook attacks over SQLite and PostgreSQL.
func TestWebhookSecurity(t *testing.T) {
	t.Parallel()
	runOverBackends(t, map[string]storeTest{
		"replayed signature":     testReplayedSignature,
		"replay across replicas": testReplayAcrossReplicas,
		"idempotency key reused": testIdempotencyKeyReused,
		"paths are per tenant":   testPathsPerTenant,
		"dot segments":           testDotSegments,
		"signatures pruned":      testSignaturesPruned,
		"legacy paths migrated":  testLegacyPathsMigrated,
	})
}

// hookPath is the part of a deployment's webhook_url after /api/v1/webhooks/.
func hookPath(t *testing.T, d *runtimev1.Deployment) string {
	t.Helper()
	p, ok := strings.CutPrefix(d.GetWebhookUrl(), "https://flows.example.com/api/v1/webhooks/")
	if !ok {
		t.Fatalf("webhook_url %q", d.GetWebhookUrl())
	}
	return p
}

func wantCode(t *testing.T, what string, err error, code connect.Code, msg string) {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != code || !strings.Contains(cerr.Message(), msg) {
		t.Fatalf("%s: %v, want %v containing %q", what, err, code, msg)
	}
}

func testReplayedSignature(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "acme", "signed", &runtimev1.Trigger{Type: "webhook", Path: "signed", Secret: secret})
	path := hookPath(t, d)
	body := []byte(`{"id":"r-1","total":5}`)
	h := signedHeaders(secret, body, time.Now())
	if _, err := s.TriggerWebhook(ctx, webhookReq(path, body, h)); err != nil {
		t.Fatal(err)
	}
	_, err := s.TriggerWebhook(ctx, webhookReq(path, body, h))
	wantCode(t, "replay", err, connect.CodeUnauthenticated, "already been used")
	// The hex digits in upper case are the same signature.
	upper := map[string]string{headerTimestamp: h[headerTimestamp], headerSignature: "sha256=" + strings.ToUpper(strings.TrimPrefix(h[headerSignature], "sha256="))}
	_, err = s.TriggerWebhook(ctx, webhookReq(path, body, upper))
	wantCode(t, "upper-case replay", err, connect.CodeUnauthenticated, "already been used")
	// Concurrent copies of a fresh signature: exactly one runs.
	// (a second before the first signature's, which a slow run could
	// otherwise reach by the clock)
	first, _ := strconv.ParseInt(h[headerTimestamp], 10, 64)
	fresh := signedHeaders(secret, body, time.Unix(first-1, 0))
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok, no int
	)
	for range 6 {
		wg.Go(func() {
			_, err := s.TriggerWebhook(ctx, webhookReq(path, body, fresh))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else if connect.CodeOf(err) == connect.CodeUnauthenticated {
				no++
			}
		})
	}
	wg.Wait()
	if ok != 1 || no != 5 {
		t.Fatalf("concurrent copies: %d ran, %d refused", ok, no)
	}
	if n := countExecutions(t, s, "acme", d.GetDeploymentId()); n != 2 {
		t.Fatalf("%d executions, want 2", n)
	}
}

func testReplayAcrossReplicas(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	a := newService(t, db, eng, nil)
	b := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, a, "acme", "replicas", &runtimev1.Trigger{Type: "webhook", Path: "replicas", Secret: secret})
	body := []byte(`{"total":1}`)
	h := signedHeaders(secret, body, time.Now())
	if _, err := a.TriggerWebhook(ctx, webhookReq(hookPath(t, d), body, h)); err != nil {
		t.Fatal(err)
	}
	_, err := b.TriggerWebhook(ctx, webhookReq(hookPath(t, d), body, h))
	wantCode(t, "replay on the other replica", err, connect.CodeUnauthenticated, "already been used")
}

func testIdempotencyKeyReused(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	d := createOrders(t, s, "", "idem-reuse", &runtimev1.Trigger{Type: "webhook", Path: "idem-reuse", ResponseMode: "wait"})
	path := hookPath(t, d)
	key := map[string]string{headerIdempotency: "key-1"}
	first, err := s.TriggerWebhook(ctx, webhookReq(path, []byte(`{"total": 500}`), key))
	if err != nil {
		t.Fatal(err)
	}
	// A different body, or the same body with another query, is another request.
	other := webhookReq(path, []byte(`{"total": 5}`), key)
	query := webhookReq(path, []byte(`{"total": 500}`), key)
	query.Msg.Query = map[string]string{"refund": "yes"}
	for name, r := range map[string]*connect.Request[runtimev1.TriggerWebhookRequest]{"body": other, "query": query} {
		_, err := s.TriggerWebhook(ctx, r)
		wantCode(t, "reused key, other "+name, err, connect.CodeFailedPrecondition, "Idempotency-Key")
		if reason := errorInfoReason(err); reason != reasonIdempotencyKeyReused {
			t.Fatalf("reused key, other %s: ErrorInfo reason %q", name, reason)
		}
	}
	// The same request again still gets the first answer.
	again, err := s.TriggerWebhook(ctx, webhookReq(path, []byte(`{"total": 500}`), key))
	if err != nil || again.Msg.GetExecutionId() != first.Msg.GetExecutionId() || again.Msg.GetStatusCode() != 201 {
		t.Fatalf("same request again: %v %v", again, err)
	}
	if n := countExecutions(t, s, "", d.GetDeploymentId()); n != 1 {
		t.Fatalf("%d executions, want 1", n)
	}
}

func errorInfoReason(err error) string {
	info, _ := errorDetail[*errdetails.ErrorInfo](err)
	return info.GetReason()
}

// errorDetail returns the first detail of type T of a Connect error.
func errorDetail[T any](err error) (T, bool) {
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		for _, d := range cerr.Details() {
			if v, derr := d.Value(); derr == nil {
				if detail, ok := v.(T); ok {
					return detail, true
				}
			}
		}
	}
	var zero T
	return zero, false
}

func testPathsPerTenant(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	a := createOrders(t, s, "tenant-a", "orders/new", nil)
	// Another tenant may use the same path: nothing tells it A has one.
	b := createOrders(t, s, "tenant-b", "orders/new", nil)
	if a.GetWebhookUrl() == b.GetWebhookUrl() || !strings.HasSuffix(b.GetWebhookUrl(), "/orders/new") {
		t.Fatalf("webhook URLs %q and %q", a.GetWebhookUrl(), b.GetWebhookUrl())
	}
	// Each URL runs its own tenant's deployment.
	for _, d := range []*runtimev1.Deployment{a, b} {
		if _, err := s.TriggerWebhook(ctx, webhookReq(hookPath(t, d), []byte(`{}`), nil)); err != nil {
			t.Fatal(err)
		}
	}
	if na, nb := countExecutions(t, s, "tenant-a", a.GetDeploymentId()), countExecutions(t, s, "tenant-b", b.GetDeploymentId()); na != 1 || nb != 1 {
		t.Fatalf("executions: A %d, B %d", na, nb)
	}
	// Within a tenant a path is still unique, and its own path may be named.
	_, err := s.CreateDeployment(ctx, req("tenant-a", &runtimev1.CreateDeploymentRequest{
		Name: "dup", WorkflowDefinition: orderWorkflow(), Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "orders/new"}},
	}))
	wantCode(t, "same tenant, same path", err, connect.CodeAlreadyExists, `"orders/new"`)
	// The tenant's URLs share one namespace segment; the bare path and a
	// made-up namespace find nothing.
	a2 := createOrders(t, s, "tenant-a", "orders/old", nil)
	nsA, _, _ := strings.Cut(hookPath(t, a), "/")
	if ns2, _, _ := strings.Cut(hookPath(t, a2), "/"); ns2 != nsA || len(nsA) < 32 {
		t.Fatalf("namespaces %q and %q", nsA, ns2)
	}
	for _, p := range []string{"orders/new", "0123456789abcdef0123456789abcdef/orders/new", nsA, nsA + "/orders/none"} {
		_, err := s.TriggerWebhook(ctx, webhookReq(p, []byte(`{}`), nil))
		wantCode(t, "path "+p, err, connect.CodeNotFound, "not found")
	}
	// Reads show the same URL as the create did.
	got, err := s.GetDeployment(ctx, req("tenant-a", &runtimev1.GetDeploymentRequest{DeploymentId: a.GetDeploymentId()}))
	if err != nil || got.Msg.GetDeployment().GetWebhookUrl() != a.GetWebhookUrl() {
		t.Fatalf("get: %v %v", got, err)
	}
}

func testDotSegments(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	for _, p := range []string{"a/../b", "./a", "a/.", "..", "a/./b"} {
		_, err := s.CreateDeployment(ctx, req("acme", &runtimev1.CreateDeploymentRequest{
			Name: "dots", WorkflowDefinition: orderWorkflow(), Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: p}},
		}))
		if f := fieldOf(t, err); f != "triggers[0].path" || !strings.Contains(err.Error(), "'.' or '..'") {
			t.Errorf("path %q: field %q, error %v", p, f, err)
		}
	}
	d := createOrders(t, s, "acme", "a/b", nil)
	ns, _, _ := strings.Cut(hookPath(t, d), "/")
	for _, p := range []string{ns + "/a/../a/b", ns + "/./a/b", ns + "/a/b/.", "../" + ns + "/a/b"} {
		_, err := s.TriggerWebhook(ctx, webhookReq(p, []byte(`{}`), nil))
		if f := fieldOf(t, err); f != "path" {
			t.Errorf("trigger %q: field %q", p, f)
		}
	}
	if n := countExecutions(t, s, "acme", d.GetDeploymentId()); n != 0 {
		t.Fatalf("%d executions for refused paths", n)
	}
}

func testSignaturesPruned(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	ctx := t.Context()
	now := time.Now()
	for i, exp := range []time.Time{now.Add(-time.Hour), now.Add(-time.Second), now.Add(time.Hour)} {
		if fresh, err := s.repo.rememberSignature(ctx, "dep", strings.Repeat("ab", 16)+string(rune('a'+i)), exp); err != nil || !fresh {
			t.Fatalf("remember %d: %v %v", i, fresh, err)
		}
	}
	if err := s.repo.pruneSignatures(ctx, now); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM webhook_signatures`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d signatures left (%v), want 1", n, err)
	}
}

// stepsBeforeTenantPaths is how many migration steps the runtime had while
// webhook paths were one global namespace.
const stepsBeforeTenantPaths = 15

// testLegacyPathsMigrated: a deployment stored under the global path table
// keeps its path, now under its tenant's namespace.
func testLegacyPathsMigrated(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	ctx := t.Context()
	if err := db.Migrate(ctx, component, migrations(db.Dialect())[:stepsBeforeTenantPaths]); err != nil {
		t.Fatal(err)
	}
	d := &deployment{id: "legacy-1", tenant: "old-co", name: "legacy", status: deploymentActive, definition: orderWorkflow(),
		triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "legacy/hook", ResponseMode: modeAsync}}}
	def, trig, _, err := encodeDeployment(d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO deployments (id, tenant, name, description, status, definition, triggers, created_at, updated_at)
		VALUES (?, ?, ?, '', ?, ?, ?, 1, 1)`, d.id, d.tenant, d.name, d.status, def, trig); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO webhook_paths (path, deployment_id) VALUES ('legacy/hook', ?)`, d.id); err != nil {
		t.Fatal(err)
	}
	s := newService(t, db, eng, nil)
	got, err := s.GetDeployment(ctx, req("old-co", &runtimev1.GetDeploymentRequest{DeploymentId: d.id}))
	if err != nil {
		t.Fatal(err)
	}
	path := hookPath(t, got.Msg.GetDeployment())
	if ns, rest, _ := strings.Cut(path, "/"); len(ns) < 32 || rest != "legacy/hook" {
		t.Fatalf("migrated webhook path %q", path)
	}
	if _, err := s.TriggerWebhook(ctx, webhookReq(path, []byte(`{}`), nil)); err != nil {
		t.Fatal(err)
	}
	// Another tenant can now have the same path.
	createOrders(t, s, "new-co", "legacy/hook", nil)
}
