package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

func TestExecutionPositions(t *testing.T) {
	t.Parallel()
	runOverBackends(t, map[string]storeTest{"concurrent writers": testConcurrentPositions})
}

// testConcurrentPositions starts and finishes executions from many callers
// of two replicas at once, some with the same idempotency key and some
// finishing the same execution twice, while a reader lists pages. The
// listings' positions must stay what they were with one writer at a time:
// dense 1..n in every group, n equal to the group's counter, no position
// visible before a smaller one, one execution per idempotency key.
func testConcurrentPositions(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, func(c *Config) { c.DisableScheduler = true })
	replicas := []*repo{s.repo, {db: db}}
	const (
		callers = 8
		rounds  = 12
	)
	var (
		wg       sync.WaitGroup
		inserted atomic.Int64
		failures = make(chan error, 2*callers)
		stop     = make(chan struct{})
	)
	fail := func(err error) {
		select {
		case failures <- err:
		default:
		}
	}
	// The reader: page 1 of each listing must hold the newest positions,
	// consecutive from the counter down.
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		filters := []executionFilter{
			{tenant: "t0"}, {tenant: "t1", deploymentID: "t1-d1"}, {tenant: "t0", status: "succeeded"},
			{tenant: "t1", deploymentID: "t1-d1", status: "failed"},
		}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			f := filters[i%len(filters)]
			page, err := s.repo.listExecutions(t.Context(), f, paging{page: 1, size: 30})
			if err != nil {
				fail(err)
				return
			}
			if want := min(page.total, 30); int64(len(page.items)) != want {
				fail(fmt.Errorf("%+v: %d items on page 1 of %d", f, len(page.items), page.total))
				return
			}
			for j, e := range page.items {
				if e.pos != page.total-int64(j) {
					fail(fmt.Errorf("%+v: item %d has position %d of %d: a gap", f, j, e.pos, page.total))
					return
				}
			}
		}
	}()
	for c := range 2 * callers {
		r := replicas[c%2]
		wg.Go(func() {
			for i := range rounds {
				e := &execution{
					id: fmt.Sprintf("c%d-%d", c, i), tenant: fmt.Sprintf("t%d", c%2), deploymentID: fmt.Sprintf("t%d-d%d", c%2, i%3),
					status: statusRunning, triggerType: triggerWebhook, startedAt: time.Now().UTC(),
				}
				ne := newExecution{e: e, owner: s.instance}
				if i%4 == 0 { // every caller of a tenant uses this key in this round
					ne.idemKey, ne.requestHash = fmt.Sprintf("key-%d", i), "h"
				}
				err := r.insertExecution(t.Context(), ne)
				if errors.Is(err, errDuplicate) && ne.idemKey != "" {
					continue
				}
				if err != nil {
					fail(fmt.Errorf("insert %s: %w", e.id, err))
					return
				}
				inserted.Add(1)
				e.status, e.finishedAt = []string{"succeeded", "failed"}[i%2], time.Now().UTC()
				if err := r.finishExecution(t.Context(), e); err != nil {
					fail(fmt.Errorf("finish %s: %w", e.id, err))
					return
				}
				// A second finish (another replica's sweep, say) changes nothing.
				late := *e
				late.status = "canceled"
				if err := replicas[(c+1)%2].finishExecution(t.Context(), &late); !errors.Is(err, errNotFound) {
					fail(fmt.Errorf("second finish of %s: %v", e.id, err))
					return
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	<-readerDone
	close(failures)
	for err := range failures {
		t.Error(err)
	}
	if t.Failed() {
		return
	}

	ctx := t.Context()
	// Each tenant's callers share one key every fourth round.
	keyed := 2 * ((rounds + 3) / 4)
	if want := int64(2*callers*rounds - (callers-1)*keyed); inserted.Load() != want {
		t.Fatalf("%d executions recorded, want %d (one per idempotency key)", inserted.Load(), want)
	}
	checkDense(ctx, t, db, "pos_all", "'all'", "tenant")
	checkDense(ctx, t, db, "pos_dep", "'dep:' || deployment_id", "tenant, deployment_id")
	checkDense(ctx, t, db, "pos_st", "'st:' || status", "tenant, status")
	checkDense(ctx, t, db, "pos_dst", "'dst:' || deployment_id || ':' || status", "tenant, deployment_id, status")
	var canceled int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM executions WHERE status = 'canceled' OR pos_st IS NULL`).Scan(&canceled); err != nil || canceled != 0 {
		t.Fatalf("%d executions finished twice or not at all (%v)", canceled, err)
	}
}

// checkDense checks that within every group the positions of column are
// exactly 1..n and that the group's counter says n.
func checkDense(ctx context.Context, t *testing.T, db *store.DB, column, scope, group string) {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT g.tenant, g.scope, g.cnt, g.lo, g.hi, COALESCE(c.n, -1)
		FROM (SELECT tenant, `+scope+` AS scope, COUNT(*) AS cnt, MIN(`+column+`) AS lo, MAX(`+column+`) AS hi
			FROM executions WHERE `+column+` IS NOT NULL GROUP BY `+group+`) g
		LEFT JOIN execution_counters c ON c.tenant = g.tenant AND c.scope = g.scope`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	groups := 0
	for rows.Next() {
		var (
			tenant, sc       string
			cnt, lo, hi, ctr int64
		)
		if err := rows.Scan(&tenant, &sc, &cnt, &lo, &hi, &ctr); err != nil {
			t.Fatal(err)
		}
		groups++
		// The unique index on the column rules out repeats, so 1..cnt is
		// exactly lo == 1 and hi == cnt.
		if lo != 1 || hi != cnt || ctr != cnt {
			t.Errorf("%s %s: %d executions at positions %d..%d, counter %d", tenant, sc, cnt, lo, hi, ctr)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if groups == 0 {
		t.Errorf("%s: no groups", column)
	}
}
