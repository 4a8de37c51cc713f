package runtimesvc

import (
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// seedExecution stores an execution of dep directly, finished with status
// unless status is running.
func seedExecution(t testing.TB, s *Service, tenant, dep, id, status string) {
	t.Helper()
	e := &execution{id: id, tenant: tenant, deploymentID: dep, status: statusRunning, triggerType: "manual", startedAt: time.Now().UTC()}
	if err := s.repo.insertExecution(t.Context(), newExecution{e: e, owner: s.instance}); err != nil {
		t.Fatal(err)
	}
	if status == statusRunning {
		return
	}
	e.status, e.finishedAt = status, time.Now().UTC()
	if err := s.repo.finishExecution(t.Context(), e); err != nil {
		t.Fatal(err)
	}
}

func list(t *testing.T, s *Service, r *runtimev1.ListExecutionsRequest) *runtimev1.ListExecutionsResponse {
	t.Helper()
	res, err := s.ListExecutions(t.Context(), req("acme", r))
	if err != nil {
		t.Fatalf("ListExecutions(%v): %v", r, err)
	}
	return res.Msg
}

func ids(es []*runtimev1.Execution) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.GetExecutionId()
	}
	return out
}

func testListExecutions(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, func(c *Config) { c.DisableScheduler = true })
	statuses := []string{"succeeded", "failed", "succeeded", statusRunning, "timed_out"}
	for i := range 25 {
		dep := "dep-a"
		if i%2 == 1 {
			dep = "dep-b"
		}
		seedExecution(t, s, "acme", dep, fmt.Sprintf("e%02d", i), statuses[i%len(statuses)])
	}
	seedExecution(t, s, "other", "dep-a", "foreign", "succeeded")

	p1 := list(t, s, &runtimev1.ListExecutionsRequest{PageSize: 10})
	if p1.GetTotalCount() != 25 || p1.GetPage() != 1 || p1.GetPageSize() != 10 || len(p1.GetExecutions()) != 10 || p1.GetExecutions()[0].GetExecutionId() != "e24" {
		t.Fatalf("page 1: total %d, ids %v", p1.GetTotalCount(), ids(p1.GetExecutions()))
	}
	p3 := list(t, s, &runtimev1.ListExecutionsRequest{PageSize: 10, Page: 3})
	if got := ids(p3.GetExecutions()); len(got) != 5 || got[0] != "e04" || got[4] != "e00" || p3.GetNextPageToken() != "" {
		t.Fatalf("page 3: %v next %q", got, p3.GetNextPageToken())
	}
	if p := list(t, s, &runtimev1.ListExecutionsRequest{PageSize: 10, Page: 9}); len(p.GetExecutions()) != 0 || p.GetTotalCount() != 25 {
		t.Fatalf("page past the end: %v", ids(p.GetExecutions()))
	}

	// Walking with tokens while new executions arrive: no duplicates, no
	// gaps among the executions that existed when the walk began.
	seen := map[string]bool{}
	token := ""
	for page := 1; ; page++ {
		p := list(t, s, &runtimev1.ListExecutionsRequest{PageSize: 7, PageToken: token})
		if p.GetPage() != int32(page) {
			t.Fatalf("page number %d, want %d", p.GetPage(), page)
		}
		for _, e := range p.GetExecutions() {
			if seen[e.GetExecutionId()] {
				t.Fatalf("%s listed twice", e.GetExecutionId())
			}
			seen[e.GetExecutionId()] = true
		}
		seedExecution(t, s, "acme", "dep-a", fmt.Sprintf("new%02d", page), "succeeded")
		if token = p.GetNextPageToken(); token == "" {
			break
		}
	}
	for i := range 25 {
		if !seen[fmt.Sprintf("e%02d", i)] {
			t.Fatalf("e%02d was never listed", i)
		}
	}
	if seen["foreign"] {
		t.Fatal("another tenant's execution was listed")
	}

	// Filters.
	byDep := list(t, s, &runtimev1.ListExecutionsRequest{DeploymentId: "dep-b", PageSize: 100})
	if byDep.GetTotalCount() != 12 || len(byDep.GetExecutions()) != 12 || byDep.GetExecutions()[0].GetExecutionId() != "e23" {
		t.Fatalf("dep-b: %d %v", byDep.GetTotalCount(), ids(byDep.GetExecutions()))
	}
	running := list(t, s, &runtimev1.ListExecutionsRequest{Status: statusRunning, PageSize: 2})
	if running.GetTotalCount() != 5 || ids(running.GetExecutions())[0] != "e23" || running.GetNextPageToken() == "" {
		t.Fatalf("running: %d %v", running.GetTotalCount(), ids(running.GetExecutions()))
	}
	r2 := list(t, s, &runtimev1.ListExecutionsRequest{Status: statusRunning, PageSize: 2, PageToken: running.GetNextPageToken()})
	if got := ids(r2.GetExecutions()); len(got) != 2 || got[0] != "e13" {
		t.Fatalf("running page 2: %v", got)
	}
	failedB := list(t, s, &runtimev1.ListExecutionsRequest{Status: "failed", DeploymentId: "dep-b", PageSize: 2})
	for _, e := range failedB.GetExecutions() {
		if e.GetStatus() != "failed" || e.GetDeploymentId() != "dep-b" {
			t.Fatalf("filter leaked %v", e)
		}
	}
	if failedB.GetTotalCount() != 3 || len(failedB.GetExecutions()) != 2 { // e01, e11, e21
		t.Fatalf("failed dep-b: %d %v", failedB.GetTotalCount(), ids(failedB.GetExecutions()))
	}
	next := list(t, s, &runtimev1.ListExecutionsRequest{Status: "failed", DeploymentId: "dep-b", PageSize: 2, PageToken: failedB.GetNextPageToken()})
	if got := ids(next.GetExecutions()); len(got) != 1 || got[0] != "e01" {
		t.Fatalf("failed dep-b page 2: %v", got)
	}

	// Bad requests.
	for field, r := range map[string]*runtimev1.ListExecutionsRequest{
		"page_size":  {PageSize: 1000},
		"page":       {Page: -1},
		"status":     {Status: "exploded"},
		"page_token": {PageToken: "not-a-token"},
	} {
		_, err := s.ListExecutions(t.Context(), req("acme", r))
		if f := fieldOf(t, err); f != field {
			t.Errorf("field %q, want %q", f, field)
		}
	}
	// A token is bound to its filters.
	_, err := s.ListExecutions(t.Context(), req("acme", &runtimev1.ListExecutionsRequest{DeploymentId: "dep-a", PageToken: p1.GetNextPageToken()}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("token reused with other filters: %v", err)
	}
}
