package engine_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// barrierServer answers each request once `want` requests are in flight
// together (or after a second, with 504), and records the most it saw at
// once. Paths ending in "/fail" answer 500 at once; "/slow" answers last.
type barrierServer struct {
	*httptest.Server
	mu      sync.Mutex
	now     int
	peak    int
	want    int
	all     chan struct{} // closed once want requests were in flight together
	allOnce sync.Once
}

func newBarrierServer(t *testing.T, want int) *barrierServer {
	t.Helper()
	b := &barrierServer{all: make(chan struct{}), want: want}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *barrierServer) serve(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, "/fail") {
		http.Error(w, "broken", http.StatusInternalServerError)
		return
	}
	b.mu.Lock()
	b.now++
	b.peak = max(b.peak, b.now)
	all := b.now >= b.want
	b.mu.Unlock()
	defer func() { b.mu.Lock(); b.now--; b.mu.Unlock() }()
	if all {
		b.allOnce.Do(func() { close(b.all) })
	}
	select {
	case <-b.all:
	case <-time.After(time.Second):
		http.Error(w, "alone", http.StatusGatewayTimeout)
		return
	case <-r.Context().Done():
		return
	}
	if strings.HasSuffix(r.URL.Path, "/slow") {
		time.Sleep(100 * time.Millisecond)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"path":"` + r.URL.Path + `"}`))
}

func (b *barrierServer) peakSeen() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// fanOut: trigger -> a (slow) and b -> merge "all" -> respond.
func fanOut(url string) *enginev1.WorkflowDefinition {
	return def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("a", "http_request", map[string]any{"url": url + "/a/slow"}),
		n("b", "http_request", map[string]any{"url": url + "/b"}),
		n("all", "merge", nil),
		n("answer", "respond", map[string]any{"body": "{{ map(input, .body.path) }}"}),
	}, c("start", "a"), c("start", "b"), c("a", "all"), c("b", "all"), c("all", "answer"))
}

func TestParallelBranchesRunConcurrently(t *testing.T) {
	t.Parallel()
	srv := newBarrierServer(t, 2)
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	res := execute(t, s, fanOut(srv.URL), nil)
	if res.GetStatus() != "succeeded" {
		t.Fatalf("status %q: %s (both branches must be in flight together)", res.GetStatus(), res.GetError())
	}
	// a finishes last but comes first: merge order is connection order.
	got := res.GetWebhookResponse().GetBody().GetListValue().AsSlice()
	if len(got) != 2 || got[0] != "/a/slow" || got[1] != "/b" {
		t.Fatalf("merged %v, want [/a/slow /b]", got)
	}
	if srv.peakSeen() != 2 {
		t.Fatalf("peak concurrency %d, want 2", srv.peakSeen())
	}
	ids := []string{}
	for _, nr := range res.GetNodeResults() {
		ids = append(ids, nr.GetNodeId())
	}
	if strings.Join(ids, ",") != "start,b,a,all,answer" {
		t.Fatalf("node results in order %v, want the order they finished in", ids)
	}
}

func TestMaxParallelNodesBoundsARun(t *testing.T) {
	t.Parallel()
	srv := newBarrierServer(t, 2)
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}, MaxParallelNodes: 1})
	res := execute(t, s, fanOut(srv.URL), nil)
	if srv.peakSeen() != 1 {
		t.Fatalf("peak concurrency %d with MaxParallelNodes 1", srv.peakSeen())
	}
	// Alone, the first branch is answered 504 and fails the run.
	if res.GetStatus() != "failed" || nodeResult(t, res, "all").GetStatus() != "skipped" {
		t.Fatalf("status %q: %v", res.GetStatus(), res.GetNodeResults())
	}
}

func TestFailedBranchStopsTheOthers(t *testing.T) {
	t.Parallel()
	srv := newBarrierServer(t, 2) // "b" waits for a partner that never comes
	s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	d := fanOut(srv.URL)
	d.Nodes[1].Parameters.Fields["url"].Kind = structValue(srv.URL + "/a/fail").Kind
	started := time.Now()
	res := execute(t, s, d, nil)
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), `node "a" failed`) {
		t.Fatalf("status %q error %q", res.GetStatus(), res.GetError())
	}
	if b := nodeResult(t, res, "b"); b.GetStatus() != "failed" || !strings.Contains(b.GetError(), "another node failed") {
		t.Fatalf("sibling: %v", b)
	}
	if time.Since(started) > 900*time.Millisecond {
		t.Fatalf("the sibling was not stopped: the run took %s", time.Since(started))
	}
	if nodeResult(t, res, "all").GetStatus() != "skipped" || nodeResult(t, res, "answer").GetStatus() != "skipped" {
		t.Fatalf("downstream ran: %v", res.GetNodeResults())
	}
}

func TestDelaysMustFitTheDeadline(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	validate := func(d *enginev1.WorkflowDefinition, timeout time.Duration) error {
		_, err := validateOnly(t, s, d, timeout)
		return err
	}
	wait := func(id, dur string) *enginev1.Node { return n(id, "delay", map[string]any{"duration": dur}) }
	// The default deadline holds the longest delay allowed.
	longest := def([]*enginev1.Node{n("start", "trigger", nil), wait("w", engine.DefaultMaxDelay.String())}, c("start", "w"))
	if err := validate(longest, 0); err != nil {
		t.Fatalf("longest delay refused under the default deadline: %v", err)
	}
	err := validate(longest, time.Minute)
	assertViolation(t, err, "workflow_definition.nodes[1].parameters.duration")
	if !strings.Contains(err.Error(), `node "w"`) || !strings.Contains(err.Error(), "deadline of 1m0s") {
		t.Fatalf("error %v", err)
	}
	// Delays in a row add up; delays on parallel branches do not.
	chain := def([]*enginev1.Node{n("start", "trigger", nil), wait("w1", "40s"), wait("w2", "40s")}, c("start", "w1"), c("w1", "w2"))
	assertViolation(t, validate(chain, time.Minute), "workflow_definition.nodes[2].parameters.duration")
	parallel := def([]*enginev1.Node{n("start", "trigger", nil), wait("w1", "40s"), wait("w2", "40s")}, c("start", "w1"), c("start", "w2"))
	if err := validate(parallel, time.Minute); err != nil {
		t.Fatalf("parallel delays refused: %v", err)
	}
	if _, err := engine.New(engine.Config{MaxDelay: 10 * time.Minute}); err == nil {
		t.Fatal("a MaxDelay the default deadline cannot hold was accepted")
	}
}

func TestConditionThatCannotBeBooleanIsRefused(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	for _, tc := range []struct {
		expr string
		what string // "" when valid
	}{
		{`"high"`, "a string"},
		{`42`, "a number"},
		{`{{ 1.5 }}`, "a number"},
		{`trigger.total * 2`, `the result of "*"`},
		{`trigger.a + trigger.b`, `the result of "+"`},
		{`"a" + trigger.b`, `the result of "+"`},
		{`-trigger.total`, "a number"},
		{`upper(trigger.name)`, "a string"},
		{`len(trigger.items)`, "a number"},
		{`[true]`, "a list"},
		{`nil`, "null"},
		{`trigger.priority == "high"`, ""},
		{`trigger.flag`, ""},
		{`not trigger.flag`, ""},
		{`trigger.total > 100 && trigger.ok`, ""},
		{`trigger.flag ?? false`, ""},
	} {
		d := def([]*enginev1.Node{n("start", "trigger", nil), n("check", "condition", map[string]any{"expression": tc.expr})}, c("start", "check"))
		_, err := executeErr(t.Context(), s, d, map[string]any{"flag": true}, 0)
		if tc.what == "" {
			if err != nil {
				t.Errorf("%s refused: %v", tc.expr, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s accepted", tc.expr)
			continue
		}
		assertViolation(t, err, "workflow_definition.nodes[1].parameters.expression")
		if !strings.Contains(err.Error(), `node "check"`) || !strings.Contains(err.Error(), "always "+tc.what) {
			t.Errorf("%s: %v", tc.expr, err)
		}
	}
}

func validateOnly(t *testing.T, s *engine.Service, d *enginev1.WorkflowDefinition, timeout time.Duration) (*enginev1.ExecutionResult, error) {
	t.Helper()
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: d, ValidateOnly: true}
	if timeout > 0 {
		req.Timeout = durationpbNew(timeout)
	}
	res, err := s.ExecuteWorkflow(t.Context(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetResult(), nil
}

// Branches running at the same time draw on one budget: each of these
// fits alone, together they do not.
func TestParallelBranchesShareTheRunBudget(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{MaxResponseBytes: 1 << 10, MaxValueBytes: 1 << 20, RunMemoryBytes: 1 << 20})
	nodes := []*enginev1.Node{n("start", "trigger", nil)}
	var conns []*enginev1.Connection
	for _, id := range []string{"a", "b", "c", "d"} {
		nodes = append(nodes, n(id, "set", map[string]any{"values": map[string]any{"x": `{{ repeat("x", 200000) }}`}, "keep_input": false}))
		conns = append(conns, c("start", id))
	}
	one := def(nodes[:2], conns[0])
	if res := execute(t, s, one, nil); res.GetStatus() != "succeeded" {
		t.Fatalf("one branch alone: %s", res.GetError())
	}
	res := execute(t, s, def(nodes, conns...), nil)
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "resource exhausted: the run used more than its memory budget") {
		t.Fatalf("status %q error %q", res.GetStatus(), res.GetError())
	}
}
