package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// replicaBackend is one replica of the engine and the runtime that counts
// the calls it gets and, while abort is set, breaks each one off after
// reading it: the call reached the backend, and no answer comes back.
type replicaBackend struct {
	calls atomic.Int64
	abort atomic.Bool
	addr  string
}

type replicaEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
	*replicaBackend
}

func (e replicaEngine) ExecuteWorkflow(context.Context, *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	e.took()
	return connect.NewResponse(nopResult), nil
}

type replicaRuntime struct {
	runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler
	*replicaBackend
}

func (r replicaRuntime) GetDeployment(_ context.Context, req *connect.Request[runtimev1.GetDeploymentRequest]) (*connect.Response[runtimev1.GetDeploymentResponse], error) {
	r.took()
	return connect.NewResponse(&runtimev1.GetDeploymentResponse{Deployment: &runtimev1.Deployment{DeploymentId: req.Msg.GetDeploymentId()}}), nil
}

type replicaAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
	*replicaBackend
}

func (a replicaAgent) WatchGeneration(_ context.Context, _ *connect.Request[agentv1.WatchGenerationRequest], stream *connect.ServerStream[agentv1.WatchGenerationResponse]) error {
	a.took()
	return stream.Send(&agentv1.WatchGenerationResponse{Type: "complete"})
}

func (a replicaAgent) Chat(_ context.Context, _ *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	a.took()
	return stream.Send(&agentv1.ChatResponse{Type: "message", Content: "hi"})
}

func (b *replicaBackend) took() {
	b.calls.Add(1)
	if b.abort.Load() {
		panic(http.ErrAbortHandler)
	}
}

// startReplica serves a replica on ln, or on a loopback port of its own.
func startReplica(tb testing.TB, ln net.Listener) *replicaBackend {
	tb.Helper()
	b := &replicaBackend{}
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(replicaEngine{replicaBackend: b}))
	mux.Handle(runtimev1connect.NewWorkflowRuntimeServiceHandler(replicaRuntime{replicaBackend: b}))
	mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(replicaAgent{replicaBackend: b}))
	if ln == nil {
		b.addr = startH2C(tb, mux).Listener.Addr().String()
		return b
	}
	srv := httptest.NewUnstartedServer(mux)
	_ = srv.Listener.Close()
	srv.Listener = ln
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = protocols
	srv.Start()
	tb.Cleanup(srv.Close)
	b.addr = ln.Addr().String()
	return b
}

// replicaGateway is a gateway whose engine and runtime are the replicas at
// address, spoken to in protocol.
func replicaGateway(tb testing.TB, address, protocol string, tweak ...func(*Config)) (*Gateway, enginev1connect.WorkflowEngineServiceClient, runtimev1connect.WorkflowRuntimeServiceClient) {
	tb.Helper()
	up := Upstream{Address: address, Protocol: protocol}
	cfg := Config{Engine: up, Runtime: up, Agent: Upstream{Address: deadAddress(tb)}, MaxTimeout: 10 * time.Second}
	for _, f := range tweak {
		f(&cfg)
	}
	gw, url := startGateway(tb, cfg)
	client := h2cClient(tb)
	return gw, enginev1connect.NewWorkflowEngineServiceClient(client, url, connect.WithGRPC()),
		runtimev1connect.NewWorkflowRuntimeServiceClient(client, url, connect.WithGRPC())
}

func runOnce(ctx context.Context, c enginev1connect.WorkflowEngineServiceClient) error {
	_, err := c.ExecuteWorkflow(ctx, connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "r"}}))
	return err
}

func getDeployment(ctx context.Context, c runtimev1connect.WorkflowRuntimeServiceClient) error {
	_, err := c.GetDeployment(ctx, connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: "d1"}))
	return err
}

var upstreamProtocols = []string{ProtocolGRPC, ProtocolConnect}

// TestReplicasShareCalls: calls to an upstream of two replicas reach both.
func TestReplicasShareCalls(t *testing.T) {
	t.Parallel()
	for _, protocol := range upstreamProtocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			a, b := startReplica(t, nil), startReplica(t, nil)
			_, engine, _ := replicaGateway(t, a.addr+","+b.addr, protocol)
			for range 40 {
				if err := runOnce(t.Context(), engine); err != nil {
					t.Fatal(err)
				}
			}
			if a.calls.Load() < 10 || b.calls.Load() < 10 {
				t.Errorf("calls %d and %d: want both replicas used", a.calls.Load(), b.calls.Load())
			}
		})
	}
}

// TestRefusingReplicaPassedOver: a replica that refuses connections costs
// no call an error, idempotent or not: a call it refused never reached it
// and is sent to the other.
func TestRefusingReplicaPassedOver(t *testing.T) {
	t.Parallel()
	for _, protocol := range upstreamProtocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			b := startReplica(t, nil)
			_, engine, _ := replicaGateway(t, deadAddress(t)+","+b.addr, protocol)
			for i := range 30 {
				if err := runOnce(t.Context(), engine); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if b.calls.Load() != 30 {
				t.Errorf("live replica took %d calls, want 30", b.calls.Load())
			}
		})
	}
}

// breakingPair starts two replicas; the first breaks every call off.
func breakingPair(t *testing.T) (a, b *replicaBackend) {
	t.Helper()
	a, b = startReplica(t, nil), startReplica(t, nil)
	a.abort.Store(true)
	return a, b
}

// checkNotResent checks that n calls with effects, failed of which failed,
// reached the replicas n times, and that the failed ones are those the
// breaking replica a took.
func checkNotResent(t *testing.T, a, b *replicaBackend, n, failed int) {
	t.Helper()
	if sent := a.calls.Load() + b.calls.Load(); sent != int64(n) {
		t.Errorf("%d calls with effects reached the backends %d times: some were re-sent", n, sent)
	}
	if int64(failed) != a.calls.Load() || failed == 0 {
		t.Errorf("%d calls failed, the breaking replica took %d", failed, a.calls.Load())
	}
}

// TestRetriesOnlyIdempotent: a replica that breaks calls off after getting
// them costs reads nothing (they are retried on the other replica), while
// a call with effects is never sent twice and fails Unavailable.
func TestRetriesOnlyIdempotent(t *testing.T) {
	t.Parallel()
	for _, protocol := range upstreamProtocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			a, b := breakingPair(t)
			_, engine, runtime := replicaGateway(t, a.addr+","+b.addr, protocol)
			for i := range 20 {
				if err := getDeployment(t.Context(), runtime); err != nil {
					t.Fatalf("read %d: %v (calls %d, %d)", i, err, a.calls.Load(), b.calls.Load())
				}
			}
			if a.calls.Load() == 0 {
				t.Fatal("the breaking replica got no read: nothing was retried")
			}
			a.calls.Store(0)
			b.calls.Store(0)
			failed := 0
			for range 20 {
				err := runOnce(t.Context(), engine)
				switch {
				case err == nil:
				case connect.CodeOf(err) == connect.CodeUnavailable:
					failed++
				default:
					t.Fatalf("write failed with %v, want Unavailable", err)
				}
			}
			checkNotResent(t, a, b, 20, failed)
		})
	}
}

// TestStreamRetriedBeforeFirstMessage: a read stream broken off before its
// first message is opened again on the other replica; a stream with effects
// is not.
func TestStreamRetriedBeforeFirstMessage(t *testing.T) {
	t.Parallel()
	for _, protocol := range upstreamProtocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			a, b := breakingPair(t)
			up := Upstream{Address: a.addr + "," + b.addr, Protocol: protocol}
			_, url := startGateway(t, Config{Agent: up, Engine: up, Runtime: up, MaxTimeout: 10 * time.Second})
			agent := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, connect.WithGRPC())
			first := func(stream interface {
				Receive() bool
				Err() error
				Close() error
			}, err error,
			) error {
				if err != nil {
					return err
				}
				defer stream.Close()
				if !stream.Receive() {
					return stream.Err()
				}
				return nil
			}
			for i := range 10 {
				if err := first(agent.WatchGeneration(t.Context(), connect.NewRequest(&agentv1.WatchGenerationRequest{SessionId: "s"}))); err != nil {
					t.Fatalf("watch %d: %v", i, err)
				}
			}
			if a.calls.Load() == 0 {
				t.Fatal("the breaking replica got no stream: nothing was retried")
			}
			a.calls.Store(0)
			b.calls.Store(0)
			failed := 0
			for range 10 {
				if err := first(agent.Chat(t.Context(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "m"}))); err != nil {
					if connect.CodeOf(err) != connect.CodeUnavailable {
						t.Fatalf("chat: %v, want Unavailable", err)
					}
					failed++
				}
			}
			checkNotResent(t, a, b, 10, failed)
		})
	}
}

// TestRetryBudget: with every replica breaking calls off, retries stay
// within the budget (a fifth of the calls plus the floor), not two per call.
func TestRetryBudget(t *testing.T) {
	t.Parallel()
	a, b := startReplica(t, nil), startReplica(t, nil)
	a.abort.Store(true)
	b.abort.Store(true)
	_, _, runtime := replicaGateway(t, a.addr+","+b.addr, ProtocolGRPC)
	const calls = 100
	for range calls {
		if err := getDeployment(t.Context(), runtime); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("read: %v, want Unavailable", err)
		}
	}
	sent := a.calls.Load() + b.calls.Load()
	if limit := int64(calls + retryFloor + defaultRetryBudget*calls); sent > limit || sent <= calls {
		t.Errorf("%d reads were sent %d times: want some retries and at most %d sends", calls, sent, limit)
	}
}

// TestHungReplicaEjected: once a replica that stopped answering is
// ejected, calls go to the other one.
func TestHungReplicaEjected(t *testing.T) {
	t.Parallel()
	a, b := startReplica(t, nil), startReplica(t, nil)
	frozen := startFreezer(t, a.addr)
	gw, engine, _ := replicaGateway(t, frozen.ln.Addr().String()+","+b.addr, ProtocolGRPC)
	if err := runOnce(t.Context(), engine); err != nil {
		t.Fatal(err)
	}
	frozen.set(true)
	// Calls that land on the frozen replica wait; the outlier detection
	// ejects it within stallAfter and a probe timeout.
	var wg sync.WaitGroup
	defer func() {
		frozen.set(false)
		wg.Wait()
	}()
	for range 4 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 6*time.Second)
			defer cancel()
			_ = runOnce(ctx, engine)
		})
	}
	pool := gw.pools[2]
	deadline := time.Now().Add(10 * time.Second)
	for pool.ejected() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the frozen replica was not ejected")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := b.calls.Load()
	for i := range 10 {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		err := runOnce(ctx, engine)
		cancel()
		if err != nil {
			t.Fatalf("call %d with a replica ejected: %v", i, err)
		}
	}
	if got := b.calls.Load() - before; got != 10 {
		t.Errorf("the live replica took %d of 10 calls", got)
	}
}

// TestDNSReplicas: a dns:/// address follows what its name resolves to.
func TestDNSReplicas(t *testing.T) {
	t.Parallel()
	lnA, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(lnA.Addr().String())
	lnB, err := net.Listen("tcp", net.JoinHostPort("127.0.0.2", port))
	if err != nil {
		_ = lnA.Close()
		t.Skipf("no second loopback address: %v", err)
	}
	a, b := startReplica(t, lnA), startReplica(t, lnB)
	var answer atomic.Pointer[[]string]
	answer.Store(&[]string{"127.0.0.1"})
	lookup := func(_ context.Context, host string) ([]string, error) {
		if host != "backends.test" {
			return nil, errors.New("unknown host " + host)
		}
		return *answer.Load(), nil
	}
	gw, engine, _ := replicaGateway(t, "dns:///backends.test:"+port, ProtocolGRPC, func(c *Config) {
		c.lookupHost = lookup
		c.ResolveInterval = 50 * time.Millisecond
	})
	callUntil := func(done func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !done() {
			if time.Now().After(deadline) {
				t.Fatalf("calls reached %d and %d", a.calls.Load(), b.calls.Load())
			}
			if err := runOnce(t.Context(), engine); err != nil {
				t.Fatal(err)
			}
		}
	}
	callUntil(func() bool { return a.calls.Load() >= 5 })
	if b.calls.Load() != 0 {
		t.Fatalf("a replica not resolved yet took %d calls", b.calls.Load())
	}
	answer.Store(&[]string{"127.0.0.2", "127.0.0.1"})
	callUntil(func() bool { return b.calls.Load() >= 5 })
	if n := gw.pools[2].size(); n != 2 {
		t.Errorf("%d replicas, want 2", n)
	}
	answer.Store(&[]string{"127.0.0.2"})
	deadline := time.Now().Add(10 * time.Second)
	for gw.pools[2].size() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the replica gone from DNS stayed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := a.calls.Load()
	for range 10 {
		if err := runOnce(t.Context(), engine); err != nil {
			t.Fatal(err)
		}
	}
	if a.calls.Load() != before {
		t.Error("a replica gone from DNS still took calls")
	}
	// A failed lookup keeps the replicas known.
	answer.Store(&[]string{})
	time.Sleep(150 * time.Millisecond)
	if err := runOnce(t.Context(), engine); err != nil {
		t.Fatalf("after an empty answer: %v", err)
	}
}

// TestConnectGET: reads are reachable with Connect GET through the
// gateway, and GET answers are kept out of shared caches.
func TestConnectGET(t *testing.T) {
	t.Parallel()
	b := startReplica(t, nil)
	_, url := startGateway(t, Config{
		Engine: Upstream{Address: b.addr}, Runtime: Upstream{Address: b.addr}, Agent: Upstream{Address: b.addr},
	})
	var methods sync.Map
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		methods.Store(r.Method, true)
		return http.DefaultTransport.RoundTrip(r)
	})}
	runtime := runtimev1connect.NewWorkflowRuntimeServiceClient(client, url, connect.WithHTTPGet())
	res, err := runtime.GetDeployment(t.Context(), connect.NewRequest(&runtimev1.GetDeploymentRequest{DeploymentId: "d7"}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetDeployment().GetDeploymentId() != "d7" {
		t.Errorf("deployment %v", res.Msg.GetDeployment())
	}
	if _, ok := methods.Load(http.MethodGet); !ok {
		t.Error("the client did not use GET")
	}
	if got := res.Header().Get("Cache-Control"); got != getCacheControl {
		t.Errorf("Cache-Control %q, want %q", got, getCacheControl)
	}
	if vary := strings.Join(res.Header().Values("Vary"), ","); !strings.Contains(vary, "Authorization") {
		t.Errorf("Vary %q does not name Authorization", vary)
	}
	// A call with effects is not made with GET, and its answer is not
	// marked cacheable.
	engine := enginev1connect.NewWorkflowEngineServiceClient(client, url, connect.WithHTTPGet())
	eres, err := engine.ExecuteWorkflow(t.Context(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "p"}}))
	if err != nil {
		t.Fatal(err)
	}
	if got := eres.Header().Get("Cache-Control"); got != "" {
		t.Errorf("POST answer Cache-Control %q", got)
	}
	// The REST read of the same method is a GET too.
	rest, err := client.Get(url + "/api/v1/workflow/deployments/d7")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(rest.Body)
	_ = rest.Body.Close()
	if rest.StatusCode != http.StatusOK || rest.Header.Get("Cache-Control") != getCacheControl {
		t.Errorf("REST GET: %d, Cache-Control %q", rest.StatusCode, rest.Header.Get("Cache-Control"))
	}
	if vary := strings.Join(rest.Header.Values("Vary"), ","); !strings.Contains(string(body), `"deployment_id":"d7"`) || !strings.Contains(vary, "Authorization") {
		t.Errorf("REST GET: Vary %q, body %.200s", vary, body)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
