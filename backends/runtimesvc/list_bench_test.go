package runtimesvc

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/backends/store/storetest"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

const (
	benchRows = 1_000_000
	benchDeps = 10
)

// BenchmarkListExecutions lists pages of 20 out of 1,000,000 stored
// executions, near the top and deep down, with and without a deployment
// filter. Page latency must not grow with the page number.
//
//	FLOWGATE_TEST_DATABASE_URL=postgres://... go test -run '^$' -bench ListExecutions ./backends/runtimesvc/
func BenchmarkListExecutions(b *testing.B) {
	for _, be := range storetest.Backends() {
		b.Run(be.Name, func(b *testing.B) {
			db := be.Open(b)
			s := newService(b, db, engineClient(b), func(c *Config) { c.DisableScheduler = true })
			start := time.Now()
			if err := seedBench(b.Context(), db); err != nil {
				b.Fatal(err)
			}
			b.Logf("%s: seeded %d executions in %s", be.Name, benchRows, time.Since(start).Round(time.Millisecond))
			last := int32(benchRows / 20)
			for _, tc := range []struct {
				name string
				req  *runtimev1.ListExecutionsRequest
			}{
				{"page=1", &runtimev1.ListExecutionsRequest{Page: 1}},
				{"page=1000", &runtimev1.ListExecutionsRequest{Page: 1000}},
				{fmt.Sprintf("page=%d(last)", last), &runtimev1.ListExecutionsRequest{Page: last}},
				{"deployment/page=1", &runtimev1.ListExecutionsRequest{DeploymentId: "dep-3", Page: 1}},
				{fmt.Sprintf("deployment/page=%d(last)", last/benchDeps), &runtimev1.ListExecutionsRequest{DeploymentId: "dep-3", Page: last / benchDeps}},
				{"status/page=1", &runtimev1.ListExecutionsRequest{Status: "succeeded", Page: 1}},
				{fmt.Sprintf("status/page=%d(last)", last), &runtimev1.ListExecutionsRequest{Status: "succeeded", Page: last}},
			} {
				tc.req.PageSize = 20
				b.Run(tc.name, func(b *testing.B) {
					for b.Loop() {
						res, err := s.ListExecutions(b.Context(), req("bench", tc.req))
						if err != nil {
							b.Fatal(err)
						}
						if len(res.Msg.GetExecutions()) != 20 {
							b.Fatalf("%d executions on the page", len(res.Msg.GetExecutions()))
						}
					}
				})
			}
			b.Run("cursor/deep", func(b *testing.B) {
				deep, err := s.ListExecutions(b.Context(), req("bench", &runtimev1.ListExecutionsRequest{PageSize: 20, Page: last - 1}))
				if err != nil {
					b.Fatal(err)
				}
				token := deep.Msg.GetNextPageToken()
				for b.Loop() {
					res, err := s.ListExecutions(b.Context(), req("bench", &runtimev1.ListExecutionsRequest{PageSize: 20, PageToken: token}))
					if err != nil || len(res.Msg.GetExecutions()) != 20 {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// seedBench bulk-inserts benchRows finished executions of tenant "bench"
// spread over benchDeps deployments, with their dense positions and
// counters, in one statement per table.
func seedBench(ctx context.Context, db *store.DB) error {
	series := db.Dialect().Pick(
		`WITH RECURSIVE cnt(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM cnt WHERE x < ?) `,
		`WITH cnt(x) AS (SELECT generate_series(0, ?::bigint)) `)
	now := time.Now().UnixMicro()
	_, err := db.Exec(ctx, series+`INSERT INTO executions (id, tenant, deployment_id, status, trigger_type, trigger_data, output,
			error, started_at, finished_at, owner, pos_all, pos_dep, pos_st, pos_dst)
		SELECT 'bench-' || x, 'bench', 'dep-' || (x % 10), 'succeeded', 'webhook', NULL, NULL,
			'', ? + x, ? + x + 1000, 'seed', x + 1, x / 10 + 1, x + 1, x / 10 + 1
		FROM cnt`, benchRows-1, now-benchRows, now-benchRows)
	if err != nil {
		return fmt.Errorf("seed executions: %w", err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO execution_counters (tenant, scope, n) VALUES (?, ?, ?), (?, ?, ?)`,
		"bench", scopeAll(), benchRows, "bench", scopeStatus("succeeded"), benchRows); err != nil {
		return fmt.Errorf("seed counters: %w", err)
	}
	for d := range benchDeps {
		dep := fmt.Sprintf("dep-%d", d)
		if _, err := db.Exec(ctx, `INSERT INTO execution_counters (tenant, scope, n) VALUES (?, ?, ?), (?, ?, ?)`,
			"bench", scopeDep(dep), benchRows/benchDeps, "bench", scopeDepStatus(dep, "succeeded"), benchRows/benchDeps); err != nil {
			return fmt.Errorf("seed counters: %w", err)
		}
	}
	_, err = db.Exec(ctx, db.Dialect().Pick(`ANALYZE`, `ANALYZE executions`))
	return err
}
