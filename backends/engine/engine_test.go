package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// n builds a node; params is a JSON-like map.
func n(id, typ string, params map[string]any) *enginev1.Node {
	node := &enginev1.Node{Id: id, Type: typ}
	if params != nil {
		s, err := structpb.NewStruct(params)
		if err != nil {
			panic(err)
		}
		node.Parameters = s
	}
	return node
}

func c(src, dst string, branch ...string) *enginev1.Connection {
	conn := &enginev1.Connection{Source: src, Target: dst}
	if len(branch) > 0 {
		conn.Branch = branch[0]
	}
	return conn
}

func def(nodes []*enginev1.Node, conns ...*enginev1.Connection) *enginev1.WorkflowDefinition {
	return &enginev1.WorkflowDefinition{Name: "test", Nodes: nodes, Connections: conns}
}

func newEngine(t *testing.T, cfg engine.Config) *engine.Service {
	t.Helper()
	s, err := engine.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func execute(t *testing.T, s *engine.Service, d *enginev1.WorkflowDefinition, trigger map[string]any) *enginev1.ExecutionResult {
	t.Helper()
	res, err := executeErr(t.Context(), s, d, trigger, 0)
	if err != nil {
		t.Fatalf("ExecuteWorkflow: %v", err)
	}
	return res
}

func executeErr(ctx context.Context, s *engine.Service, d *enginev1.WorkflowDefinition, trigger map[string]any, timeout time.Duration) (*enginev1.ExecutionResult, error) {
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: d}
	if trigger != nil {
		td, err := structpb.NewStruct(trigger)
		if err != nil {
			return nil, err
		}
		req.TriggerData = td
	}
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout)
	}
	res, err := s.ExecuteWorkflow(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetResult(), nil
}

func nodeResult(t *testing.T, r *enginev1.ExecutionResult, id string) *enginev1.NodeResult {
	t.Helper()
	for _, nr := range r.GetNodeResults() {
		if nr.GetNodeId() == id {
			return nr
		}
	}
	t.Fatalf("no result for node %q in %v", id, r.GetNodeResults())
	return nil
}

func TestValidation(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	trig := n("start", "trigger", nil)
	cases := []struct {
		name  string
		def   *enginev1.WorkflowDefinition
		field string
	}{
		{"missing definition", nil, "workflow_definition"},
		{"no nodes", def(nil), "workflow_definition.nodes"},
		{"no trigger", def([]*enginev1.Node{n("a", "set", map[string]any{"values": map[string]any{"x": 1}})}), "workflow_definition.nodes"},
		{"unknown type", def([]*enginev1.Node{trig, n("a", "teleport", nil)}, c("start", "a")), "workflow_definition.nodes[1].type"},
		{"empty id", def([]*enginev1.Node{trig, n("", "set", nil)}), "workflow_definition.nodes[1].id"},
		{"duplicate id", def([]*enginev1.Node{trig, n("start", "respond", nil)}), "workflow_definition.nodes[1].id"},
		{"two triggers", def([]*enginev1.Node{trig, n("t2", "trigger", nil)}), "workflow_definition.nodes[1].type"},
		{"missing url", def([]*enginev1.Node{trig, n("call", "http_request", map[string]any{})}, c("start", "call")), "workflow_definition.nodes[1].parameters.url"},
		{"bad url scheme", def([]*enginev1.Node{trig, n("call", "http_request", map[string]any{"url": "file:///etc/passwd"})}, c("start", "call")), "workflow_definition.nodes[1].parameters.url"},
		{"unknown parameter", def([]*enginev1.Node{trig, n("w", "delay", map[string]any{"duration": "1s", "durration": "2s"})}, c("start", "w")), "workflow_definition.nodes[1].parameters.durration"},
		{"delay too long", def([]*enginev1.Node{trig, n("w", "delay", map[string]any{"duration": "10h"})}, c("start", "w")), "workflow_definition.nodes[1].parameters.duration"},
		{"bad expression", def([]*enginev1.Node{trig, n("if", "condition", map[string]any{"expression": "trigger.total >"})}, c("start", "if", "true")), "workflow_definition.nodes[1].parameters.expression"},
		{"unknown variable", def([]*enginev1.Node{trig, n("if", "condition", map[string]any{"expression": "totl > 3"})}, c("start", "if", "true")), "workflow_definition.nodes[1].parameters.expression"},
		{"bad template", def([]*enginev1.Node{trig, n("s", "set", map[string]any{"values": map[string]any{"a": "{{ input.x "}})}, c("start", "s")), "workflow_definition.nodes[1].parameters.values.a"},
		{"dangling source", def([]*enginev1.Node{trig}, c("ghost", "start")), "workflow_definition.connections[0].source"},
		{"dangling target", def([]*enginev1.Node{trig}, c("start", "ghost")), "workflow_definition.connections[0].target"},
		{"into trigger", def([]*enginev1.Node{trig, n("r", "respond", nil)}, c("start", "r"), c("r", "start")), "workflow_definition.connections[1].target"},
		{"branch on plain node", def([]*enginev1.Node{trig, n("r", "respond", nil)}, c("start", "r", "true")), "workflow_definition.connections[0].branch"},
		{"condition without branch", def([]*enginev1.Node{trig, n("if", "condition", map[string]any{"expression": "true"}), n("r", "respond", nil)}, c("start", "if"), c("if", "r")), "workflow_definition.connections[1].branch"},
		{"cycle", def([]*enginev1.Node{trig, n("a", "merge", nil), n("b", "merge", nil)}, c("start", "a"), c("a", "b"), c("b", "a")), "workflow_definition.connections[1].target"},
		{"unreachable", def([]*enginev1.Node{trig, n("lonely", "respond", nil)}), "workflow_definition.nodes[1].id"},
		{"bad status code", def([]*enginev1.Node{trig, n("r", "respond", map[string]any{"status_code": 99})}, c("start", "r")), "workflow_definition.nodes[1].parameters.status_code"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := executeErr(t.Context(), s, tc.def, nil, 0)
			assertViolation(t, err, tc.field)
		})
	}
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: def([]*enginev1.Node{trig}), Timeout: durationpb.New(-time.Second)}
		_, err := s.ExecuteWorkflow(t.Context(), connect.NewRequest(req))
		assertViolation(t, err, "timeout")
	})
}

func assertViolation(t *testing.T, err error, field string) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("error = %v, want InvalidArgument", err)
	}
	var cerr *connect.Error
	if !errors.As(err, &cerr) {
		t.Fatalf("not a connect error: %v", err)
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if br, ok := v.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			fv := br.GetFieldViolations()[0]
			if fv.GetField() != field {
				t.Fatalf("field = %q (%s), want %q", fv.GetField(), fv.GetDescription(), field)
			}
			if fv.GetDescription() == "" {
				t.Fatal("empty description")
			}
			return
		}
	}
	t.Fatalf("no BadRequest detail in %v", err)
}

func TestValidateOnly(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	d := def([]*enginev1.Node{n("start", "trigger", nil), n("wait", "delay", map[string]any{"duration": "1m"})}, c("start", "wait"))
	start := time.Now()
	res, err := s.ExecuteWorkflow(t.Context(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: d, ValidateOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Msg.GetResult().GetStatus(); got != "valid" || len(res.Msg.GetResult().GetNodeResults()) != 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("status %q with %d node results", got, len(res.Msg.GetResult().GetNodeResults()))
	}
}

// orderFlow: trigger -> set -> condition(total > 100) -> respond big / respond small.
func orderFlow() *enginev1.WorkflowDefinition {
	return def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("enrich", "set", map[string]any{"values": map[string]any{"total": "{{ trigger.total * 1.0 }}", "customer.name": "{{ upper(trigger.name) }}", "label": "order {{ trigger.id }}"}}),
		n("big", "condition", map[string]any{"expression": "input.total > 100"}),
		n("yes", "respond", map[string]any{"status_code": 201, "headers": map[string]any{"X-Tier": "gold"}, "body": map[string]any{"tier": "gold", "who": "{{ nodes.enrich.customer.name }}"}}),
		n("no", "respond", map[string]any{"body": "standard {{ input.label }}"}),
	}, c("start", "enrich"), c("enrich", "big"), c("big", "yes", "true"), c("big", "no", "false"))
}

func TestConditionAndRespond(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	res := execute(t, s, orderFlow(), map[string]any{"total": 150, "name": "ada", "id": "o-1"})
	if res.GetStatus() != "succeeded" {
		t.Fatalf("status %q: %s", res.GetStatus(), res.GetError())
	}
	if got := nodeResult(t, res, "no").GetStatus(); got != "skipped" {
		t.Fatalf("false branch status %q, want skipped", got)
	}
	enrich := nodeResult(t, res, "enrich").GetOutput().GetStructValue().AsMap()
	if enrich["total"] != 150.0 || enrich["label"] != "order o-1" || enrich["customer"].(map[string]any)["name"] != "ADA" || enrich["name"] != "ada" {
		t.Fatalf("set output %v", enrich)
	}
	wr := res.GetWebhookResponse()
	if wr.GetStatusCode() != 201 || wr.GetHeaders()["X-Tier"] != "gold" || wr.GetBody().GetStructValue().AsMap()["who"] != "ADA" {
		t.Fatalf("webhook response %v", wr)
	}
	for _, nr := range res.GetNodeResults() {
		if nr.GetStatus() == "succeeded" && (nr.GetStartedAt() == nil || nr.GetFinishedAt() == nil) {
			t.Fatalf("node %s has no timing", nr.GetNodeId())
		}
	}

	res = execute(t, s, orderFlow(), map[string]any{"total": 20, "name": "bob", "id": "o-2"})
	if nodeResult(t, res, "yes").GetStatus() != "skipped" || res.GetWebhookResponse().GetBody().GetStringValue() != "standard order o-2" {
		t.Fatalf("small order: %v", res)
	}
}

func TestMergeAndContinueOnError(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	d := def([]*enginev1.Node{
		n("start", "trigger", nil),
		n("a", "set", map[string]any{"values": map[string]any{"a": 1}, "keep_input": false}),
		n("b", "set", map[string]any{"values": map[string]any{"b": "{{ trigger.missing.deep }}"}, "keep_input": false}),
		n("m", "merge", map[string]any{"mode": "merge_objects"}),
		n("all", "merge", nil),
	}, c("start", "a"), c("start", "b"), c("a", "m"), c("b", "m"), c("a", "all"), c("b", "all"))
	d.Nodes[2].ContinueOnError = true
	res := execute(t, s, d, map[string]any{})
	if nodeResult(t, res, "b").GetStatus() != "failed" || nodeResult(t, res, "b").GetError() == "" {
		t.Fatalf("node b: %v", nodeResult(t, res, "b"))
	}
	if res.GetStatus() != "succeeded" {
		t.Fatalf("continue_on_error run status %q: %s", res.GetStatus(), res.GetError())
	}
	all := nodeResult(t, res, "all").GetOutput().GetListValue().AsSlice()
	if len(all) != 2 || all[0].(map[string]any)["a"] != 1.0 || all[1].(map[string]any)["error"] == nil {
		t.Fatalf("append merge: %v", all)
	}
	m := nodeResult(t, res, "m").GetOutput().GetStructValue().AsMap()
	if m["a"] != 1.0 || m["error"] == nil {
		t.Fatalf("object merge: %v", m)
	}
	// Without continue_on_error the failure stops the run.
	d.Nodes[2].ContinueOnError = false
	res = execute(t, s, d, map[string]any{})
	if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), `"b"`) {
		t.Fatalf("status %q error %q", res.GetStatus(), res.GetError())
	}
	if nodeResult(t, res, "all").GetStatus() != "skipped" {
		t.Fatal("a node after the failure ran")
	}
}

func TestDelayAndDeadline(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{})
	d := def([]*enginev1.Node{n("start", "trigger", nil), n("wait", "delay", map[string]any{"duration": 0.05}), n("after", "respond", nil)},
		c("start", "wait"), c("wait", "after"))
	res := execute(t, s, d, map[string]any{"x": 1})
	w := nodeResult(t, res, "wait")
	if res.GetStatus() != "succeeded" || w.GetFinishedAt().AsTime().Sub(w.GetStartedAt().AsTime()) < 50*time.Millisecond {
		t.Fatalf("delay: %v", res)
	}
	// A run whose deadline passes mid-node ends timed_out; the rest is skipped.
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	s = newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	d = def([]*enginev1.Node{n("start", "trigger", nil), n("wait", "http_request", map[string]any{"url": slow.URL}), n("after", "respond", nil)},
		c("start", "wait"), c("wait", "after"))
	start := time.Now()
	res, err := executeErr(t.Context(), s, d, nil, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if res.GetStatus() != "timed_out" || time.Since(start) > 3*time.Second {
		t.Fatalf("status %q after %s", res.GetStatus(), time.Since(start))
	}
	if nodeResult(t, res, "wait").GetStatus() != "failed" || nodeResult(t, res, "after").GetStatus() != "skipped" {
		t.Fatalf("node results %v", res.GetNodeResults())
	}
}

func TestExpressionLimits(t *testing.T) {
	t.Parallel()
	s := newEngine(t, engine.Config{ExprMemoryBudget: 10_000})
	d := def([]*enginev1.Node{n("start", "trigger", nil), n("s", "set", map[string]any{"values": map[string]any{"x": "{{ len(map(1..1000000, # * 2)) }}"}})}, c("start", "s"))
	res := execute(t, s, d, nil)
	if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "s").GetError(), "memory budget") {
		t.Fatalf("runaway expression: %v", res)
	}
	// A huge expression is refused when validated.
	huge := strings.Repeat("1 + ", 5000) + "1"
	d = def([]*enginev1.Node{n("start", "trigger", nil), n("s", "set", map[string]any{"values": map[string]any{"x": "{{ " + huge + " }}"}})}, c("start", "s"))
	_, err := executeErr(t.Context(), s, d, nil, 0)
	assertViolation(t, err, "workflow_definition.nodes[1].parameters.values.x")
}

func httpFlow(url string, extra map[string]any) *enginev1.WorkflowDefinition {
	params := map[string]any{"url": url}
	for k, v := range extra {
		params[k] = v
	}
	return def([]*enginev1.Node{n("start", "trigger", nil), n("call", "http_request", params)}, c("start", "call"))
}

func TestHTTPRequestGuard(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/redirect":
			// Same server under a name that is not allowlisted.
			http.Redirect(w, r, strings.Replace("http://"+r.Host, "127.0.0.1", "localhost", 1)+"/echo", http.StatusFound)
		case "/big":
			_, _ = io.WriteString(w, strings.Repeat("x", 4096))
		case "/fail":
			http.Error(w, "nope", http.StatusServiceUnavailable)
		default:
			body, _ := io.ReadAll(r.Body)
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"method":%q,"q":%q,"body":%q,"h":%q}`, r.Method, r.URL.Query().Get("q"), body, r.Header.Get("X-Test"))
		}
	}))
	t.Cleanup(srv.Close)

	t.Run("loopback refused by default", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{})
		res := execute(t, s, httpFlow(srv.URL+"/echo", nil), nil)
		if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "call").GetError(), "not allowed") {
			t.Fatalf("loopback call: %v", res)
		}
	})
	t.Run("name resolving to loopback refused", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{})
		res := execute(t, s, httpFlow(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)+"/echo", nil), nil)
		if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "call").GetError(), "not allowed") {
			t.Fatalf("localhost call: %v", res)
		}
	})
	t.Run("metadata address refused", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPTimeout: 2 * time.Second})
		res := execute(t, s, httpFlow("http://169.254.169.254/latest/meta-data/", nil), nil)
		if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "call").GetError(), "not allowed") {
			t.Fatalf("metadata call: %v", res)
		}
	})
	t.Run("allowlisted host works", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
		res := execute(t, s, httpFlow(srv.URL+"/echo", map[string]any{
			"method": "POST", "query": map[string]any{"q": "{{ trigger.q }}"}, "headers": map[string]any{"X-Test": "t-{{ trigger.q }}"},
			"body": map[string]any{"n": "{{ trigger.n }}"},
		}), map[string]any{"q": "hello", "n": 3})
		if res.GetStatus() != "succeeded" {
			t.Fatalf("allowlisted call: %s %v", res.GetError(), res)
		}
		out := nodeResult(t, res, "call").GetOutput().GetStructValue().AsMap()
		body := out["body"].(map[string]any)
		if out["status_code"] != 200.0 || body["method"] != "POST" || body["q"] != "hello" || body["body"] != `{"n":3}` || body["h"] != "t-hello" {
			t.Fatalf("output %v", out)
		}
	})
	t.Run("allowlisted range works", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.0/8"}})
		res := execute(t, s, httpFlow(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)+"/echo", nil), nil)
		if res.GetStatus() != "succeeded" {
			t.Fatalf("allowlisted range: %s", res.GetError())
		}
	})
	t.Run("redirect to a refused host", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
		res := execute(t, s, httpFlow(srv.URL+"/redirect", nil), nil)
		if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "call").GetError(), "not allowed") {
			t.Fatalf("redirect: %v", res)
		}
	})
	t.Run("response size cap", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
		res := execute(t, s, httpFlow(srv.URL+"/big", map[string]any{"max_response_bytes": 1024}), nil)
		if res.GetStatus() != "failed" || !strings.Contains(nodeResult(t, res, "call").GetError(), "larger than 1024") {
			t.Fatalf("size cap: %v", res)
		}
	})
	t.Run("error status", func(t *testing.T) {
		t.Parallel()
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
		res := execute(t, s, httpFlow(srv.URL+"/fail", nil), nil)
		if res.GetStatus() != "failed" || !strings.Contains(res.GetError(), "503") {
			t.Fatalf("503: %v", res)
		}
		res = execute(t, s, httpFlow(srv.URL+"/fail", map[string]any{"fail_on_status": false}), nil)
		if res.GetStatus() != "succeeded" || nodeResult(t, res, "call").GetOutput().GetStructValue().AsMap()["status_code"] != 503.0 {
			t.Fatalf("503 tolerated: %v", res)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	if _, err := engine.New(engine.Config{HTTPAllowHosts: []string{"10.0.0.0/99"}}); err == nil {
		t.Fatal("bad CIDR accepted")
	}
	if _, err := engine.New(engine.Config{DefaultRunTimeout: time.Hour, MaxRunTimeout: time.Minute}); err == nil {
		t.Fatal("default above max accepted")
	}
}

func durationpbNew(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func structValue(v any) *structpb.Value {
	pv, err := structpb.NewValue(v)
	if err != nil {
		panic(err)
	}
	return pv
}
