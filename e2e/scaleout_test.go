package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/store/storetest"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/server"
)

// envRedisURL names the Redis the rate-limit tests share.
const envRedisURL = "FLOWGATE_TEST_REDIS_URL"

// scaleOutDeps returns the PostgreSQL schema URL and Redis URL of the
// scale-out test, skipping it without them, except in CI, which must run it.
func scaleOutDeps(t *testing.T) (dbURL, redisURL string) {
	t.Helper()
	redisURL = os.Getenv(envRedisURL)
	if os.Getenv(storetest.EnvDatabaseURL) == "" || redisURL == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI must run the scale-out test: set %s and %s", storetest.EnvDatabaseURL, envRedisURL)
		}
		t.Skipf("%s and %s are needed", storetest.EnvDatabaseURL, envRedisURL)
	}
	dbURL, _ = storetest.PostgresSchema(t)
	return dbURL, redisURL
}

// replicaSet is one replica of the three reference backends, started as
// flowgate-backends starts them; kill cuts it off as a crash would.
type replicaSet struct {
	b                      *backends.Backends
	agent, runtime, engine string
	killed                 atomic.Bool
}

func startReplicaSet(t *testing.T, dbURL, publicURL string, key []byte) *replicaSet {
	t.Helper()
	ls, err := backends.LoopbackListeners()
	if err != nil {
		t.Fatal(err)
	}
	b, err := backends.Start(context.Background(), backends.Config{DatabaseURL: dbURL, PublicURL: publicURL, AuthKey: key}, ls)
	if err != nil {
		t.Fatal(err)
	}
	r := &replicaSet{b: b}
	r.agent, r.runtime, r.engine = b.Addrs()
	t.Cleanup(func() { r.kill() })
	return r
}

// kill stops accepting calls and cuts the open connections at once, with
// the calls in flight on them.
func (r *replicaSet) kill() {
	if r.killed.Swap(true) {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = r.b.Shutdown(ctx)
}

// scaleOutGateway serves a gateway in front of every replica on ln, with
// rate limits kept in Redis.
func scaleOutGateway(t *testing.T, ln net.Listener, reps []*replicaSet, key []byte, redisURL, prefix string) {
	t.Helper()
	join := func(addr func(*replicaSet) string) server.Upstream {
		var addrs []string
		for _, r := range reps {
			addrs = append(addrs, addr(r))
		}
		return server.Upstream{Address: strings.Join(addrs, ",")}
	}
	serveGateway(t, ln, server.Config{
		Agent:      join(func(r *replicaSet) string { return r.agent }),
		Runtime:    join(func(r *replicaSet) string { return r.runtime }),
		Engine:     join(func(r *replicaSet) string { return r.engine }),
		MaxTimeout: 10 * time.Second,
		Security: server.SecurityConfig{
			BackendKey:     string(key),
			RedisURL:       redisURL,
			RedisKeyPrefix: prefix,
			// One procedure is limited, so that the load is not.
			RateLimitOverrides: runtimev1connect.WorkflowRuntimeServiceGetExecutionProcedure + "=0.01:10",
		},
	})
}

// loadResult is what one kind of call saw during the load.
type loadResult struct {
	mu       sync.Mutex
	ok       int
	okAfter  int // calls started after the kill that succeeded
	failures []callFailure
	killedAt *atomic.Int64
}

type callFailure struct {
	started time.Time
	err     error
}

func (l *loadResult) record(started time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.ok++
		if k := l.killedAt.Load(); k != 0 && started.UnixNano() > k {
			l.okAfter++
		}
		return
	}
	l.failures = append(l.failures, callFailure{started, err})
}

// TestScaleOut runs two gateways in front of two replicas of the reference
// backends sharing PostgreSQL, and Redis for rate limits. Under load through
// both gateways one replica is killed: reads see no error (they are retried
// on the other replica), calls with effects fail Unavailable only when they
// were in flight on the killed replica. Both gateways draw on one rate-limit
// budget, and the two replicas' schedulers fire a schedule once per tick.
func TestScaleOut(t *testing.T) {
	t.Parallel()
	dbURL, redisURL := scaleOutDeps(t)
	ctx := withTimeout(t, 2*time.Minute)
	key := interceptors.GenerateBackendKey()
	var lns [2]net.Listener
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
	}
	public := "http://" + lns[0].Addr().String()
	reps := []*replicaSet{startReplicaSet(t, dbURL, public, key), startReplicaSet(t, dbURL, public, key)}
	// A third replica, outside the gateways' lists, runs the schedule too:
	// after the kill, two schedulers still race for every tick.
	startReplicaSet(t, dbURL, public, key)
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	prefix := "flowgate:rl:scaleout-" + hex.EncodeToString(suffix[:]) + ":"
	var engines [2]enginev1connect.WorkflowEngineServiceClient
	var runtimes [2]runtimev1connect.WorkflowRuntimeServiceClient
	for i, ln := range lns {
		scaleOutGateway(t, ln, reps, key, redisURL, prefix)
		url := "http://" + ln.Addr().String()
		engines[i] = enginev1connect.NewWorkflowEngineServiceClient(h2c(t), url, connect.WithGRPC())
		// Reads over Connect GET, the way a browser may cache them.
		runtimes[i] = runtimev1connect.NewWorkflowRuntimeServiceClient(http1(t), url, connect.WithHTTPGet())
	}

	// A schedule firing every minute, deployed while both replicas run.
	deployed := time.Now()
	scheduled, err := runtimes[0].CreateDeployment(ctx, connect.NewRequest(&runtimev1.CreateDeploymentRequest{
		Name: "every minute", WorkflowDefinition: greeter(t),
		Triggers: []*runtimev1.Trigger{{Type: "schedule", Cron: "* * * * *"}},
	}))
	if err != nil {
		t.Fatalf("CreateDeployment: %v", err)
	}
	scheduleID := scheduled.Msg.GetDeployment().GetDeploymentId()

	t.Run("shared rate limit", func(t *testing.T) {
		// The budget of 10 calls (refilled once in 100 s) is the two
		// gateways' together: each alone would let 10 through.
		allowed := 0
		for i := range 24 {
			_, err := runtimes[i%2].GetExecution(ctx, connect.NewRequest(&runtimev1.GetExecutionRequest{ExecutionId: "none"}))
			switch connect.CodeOf(err) {
			case connect.CodeResourceExhausted:
			case connect.CodeNotFound:
				allowed++
			default:
				t.Fatalf("GetExecution: %v", err)
			}
		}
		if allowed < 10 || allowed > 11 {
			t.Errorf("%d of 24 calls through two gateways were let through, want the shared budget's 10", allowed)
		}
	})

	def := greeter(t)
	var killedAt atomic.Int64 // unix nanoseconds, when the kill was done
	reads, writes := &loadResult{killedAt: &killedAt}, &loadResult{killedAt: &killedAt}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 2 {
		for range 3 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					var err error
					if i%2 == 0 {
						_, err = runtimes[g].GetDeployment(ctx, connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: scheduleID}))
					} else {
						_, err = runtimes[g].ListDeployments(ctx, connect.NewRequest(&runtimev1.ListDeploymentsRequest{PageSize: 5}))
					}
					reads.record(start, err)
				}
			})
		}
		for range 2 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					start := time.Now()
					_, err := engines[g].ExecuteWorkflow(ctx, connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: def}))
					writes.record(start, err)
				}
			})
		}
	}
	time.Sleep(1500 * time.Millisecond)
	reps[0].kill()
	killedAt.Store(time.Now().UnixNano())
	time.Sleep(4 * time.Second)
	close(stop)
	wg.Wait()

	afterKill := 0
	for _, f := range reads.failures {
		t.Errorf("a read started %s after the load began failed: %v", f.started.Format(time.StampMilli), f.err)
	}
	// The gateway learns that a connection is gone only when it uses it:
	// a call started just after the kill may still be sent on it.
	grace := time.Unix(0, killedAt.Load()).Add(2 * time.Second)
	for _, f := range writes.failures {
		if connect.CodeOf(f.err) != connect.CodeUnavailable {
			t.Errorf("a write failed with %v, want Unavailable", f.err)
		}
		if f.started.After(grace) {
			afterKill++
		}
	}
	if afterKill > 0 {
		t.Errorf("%d writes started over two seconds after the kill failed; the killed replica should have been passed over", afterKill)
	}
	if reads.okAfter == 0 || writes.okAfter == 0 {
		t.Errorf("after the kill %d reads and %d writes succeeded, want the other replica serving", reads.okAfter, writes.okAfter)
	}
	t.Logf("load: %d reads, %d writes ok (%d and %d after the kill), %d writes failed (in flight at the kill)",
		reads.ok, writes.ok, reads.okAfter, writes.okAfter, len(writes.failures))

	checkScheduleTicks(ctx, t, runtimes[1], scheduleID, deployed)
}

// checkScheduleTicks waits for the first minute tick after deployed, the
// finest cron has (the wait overlaps the rest of the test, but makes it last
// up to a minute), and checks that it ran the schedule exactly once
// although several replicas' schedulers were due to fire it.
func checkScheduleTicks(ctx context.Context, t *testing.T, runtime runtimev1connect.WorkflowRuntimeServiceClient, id string, deployed time.Time) {
	t.Helper()
	next := deployed.Truncate(time.Minute).Add(time.Minute)
	if next.Sub(deployed) < 3*time.Second {
		// The schedulers may have loaded the schedule after that tick.
		next = next.Add(time.Minute)
	}
	// The tick, and its execution being recorded.
	select {
	case <-time.After(time.Until(next) + 3*time.Second):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	res, err := runtime.ListExecutions(ctx, connect.NewRequest(&runtimev1.ListExecutionsRequest{DeploymentId: id, PageSize: 100}))
	if err != nil {
		t.Fatalf("ListExecutions: %v", err)
	}
	fired := map[string]int{}
	for _, e := range res.Msg.GetExecutions() {
		if e.GetTriggerType() != "schedule" {
			continue
		}
		fired[e.GetTriggerData().GetFields()["scheduled_at"].GetStringValue()]++
	}
	for tick, n := range fired {
		if n != 1 {
			t.Errorf("tick %s ran %d times", tick, n)
		}
	}
	if at := next.UTC().Format(time.RFC3339); fired[at] != 1 {
		t.Errorf("tick %s ran %d times, want once (ran: %v)", at, fired[at], fired)
	}
}
