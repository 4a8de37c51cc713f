package runtimesvc

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends/store/storetest"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// BenchmarkWebhookExecutions runs webhook executions of one deployment of
// one tenant (the most contended case) on PostgreSQL with 1 to 16
// concurrent callers. Each call waits for its execution to be recorded,
// run by the engine and recorded as finished.
//
//	FLOWGATE_TEST_DATABASE_URL=postgres://... go test -run '^$' -bench WebhookExecutions -benchtime=2000x ./backends/runtimesvc/
func BenchmarkWebhookExecutions(b *testing.B) {
	db := storetest.OpenPostgres(b)
	s := newService(b, db, engineClient(b), func(c *Config) { c.DisableScheduler = true })
	res, err := s.CreateDeployment(b.Context(), req("bench", &runtimev1.CreateDeploymentRequest{
		Name: "bench", WorkflowDefinition: noRespondWorkflow(),
		Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "bench", ResponseMode: modeWait}},
	}))
	if err != nil {
		b.Fatal(err)
	}
	path, ok := strings.CutPrefix(res.Msg.GetDeployment().GetWebhookUrl(), "https://flows.example.com/api/v1/webhooks/")
	if !ok {
		b.Fatalf("webhook_url %q", res.Msg.GetDeployment().GetWebhookUrl())
	}
	body := []byte(`{"id":"o-1","total":250}`)
	benchCallers(b, func() error {
		r, err := s.TriggerWebhook(b.Context(), webhookReq(path, body, nil))
		if err == nil && r.Msg.GetStatus() != "succeeded" {
			err = fmt.Errorf("status %q", r.Msg.GetStatus())
		}
		return err
	})
}

// noRespondWorkflow is orderWorkflow without respond nodes: a respond node
// answers the caller as soon as it runs, before the execution is recorded
// as finished, and the benchmark must wait for the whole execution.
func noRespondWorkflow() *enginev1.WorkflowDefinition {
	return &enginev1.WorkflowDefinition{
		Name: "orders",
		Nodes: []*enginev1.Node{
			node("start", "trigger", nil),
			node("big", "condition", map[string]any{"expression": "trigger.body.total > 100"}),
			node("gold", "set", map[string]any{"values": map[string]any{"tier": "gold", "order": "{{ trigger.body.id }}"}}),
		},
		Connections: []*enginev1.Connection{
			{Source: "start", Target: "big"},
			{Source: "big", Target: "gold", Branch: "true"},
		},
	}
}

// BenchmarkExecutionRecords measures what the database allows without the
// engine's and the RPC layer's CPU: each operation records a running
// execution and then its success, as every execution does, for one
// deployment of one tenant on PostgreSQL.
//
//	FLOWGATE_TEST_DATABASE_URL=postgres://... go test -run '^$' -bench ExecutionRecords -benchtime=2000x ./backends/runtimesvc/
func BenchmarkExecutionRecords(b *testing.B) {
	db := storetest.OpenPostgres(b)
	s := newService(b, db, engineClient(b), func(c *Config) { c.DisableScheduler = true })
	var seq atomic.Int64
	benchCallers(b, func() error {
		e := &execution{id: fmt.Sprintf("rec-%d", seq.Add(1)), tenant: "bench", deploymentID: "dep", status: statusRunning,
			triggerType: triggerWebhook, startedAt: time.Now().UTC()}
		if err := s.repo.insertExecution(b.Context(), newExecution{e: e, owner: s.instance}); err != nil {
			return err
		}
		e.status, e.finishedAt = "succeeded", time.Now().UTC()
		return s.repo.finishExecution(b.Context(), e)
	})
}

// benchCallers runs op b.N times in all, from 1, 2, 4, 8 and 16 concurrent
// callers, and reports operations per second as execs/s.
func benchCallers(b *testing.B, op func() error) {
	for _, callers := range []int{1, 2, 4, 8, 16} {
		b.Run(fmt.Sprintf("callers=%d", callers), func(b *testing.B) {
			var (
				left   atomic.Int64
				wg     sync.WaitGroup
				failed atomic.Value
			)
			left.Store(int64(b.N))
			b.ResetTimer()
			for range callers {
				wg.Go(func() {
					for left.Add(-1) >= 0 {
						if err := op(); err != nil {
							failed.CompareAndSwap(nil, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "execs/s")
		})
	}
}
