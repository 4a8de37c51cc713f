package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// recorder is the outside world of a planned workflow: it answers GETs
// with fixed JSON, answers every other method {"ok": true, "got": <body>},
// and records each request as "METHOD /path body".
type recorder struct {
	*httptest.Server
	mu   sync.Mutex
	seen []string
}

var fixtures = map[string]string{
	"/ticket": `{"id":7,"priority":"high"}`,
	"/report": `{"rows":3}`,
	"/status": `{"up":true}`,
}

func newRecorder(t *testing.T) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.seen = append(rec.seen, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+string(body)))
		rec.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, fixtures[r.URL.Path])
			return
		}
		got := "null"
		if len(body) > 0 && json.Valid(body) {
			got = string(body)
		}
		_, _ = io.WriteString(w, `{"ok":true,"got":`+got+`}`)
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (rec *recorder) take() string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := strings.Join(rec.seen, "; ")
	rec.seen = nil
	return out
}

// shape renders a definition compactly: each node as id:type{params} in
// definition order, then each connection, with the server's address as S.
func shape(def *enginev1.WorkflowDefinition, base string) string {
	var parts []string
	for _, n := range def.GetNodes() {
		params := n.GetParameters().AsMap()
		keys := make([]string, 0, len(params))
		for k := range params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var kv []string
		for _, k := range keys {
			kv = append(kv, fmt.Sprintf("%s=%v", k, params[k]))
		}
		parts = append(parts, fmt.Sprintf("%s:%s{%s}", n.GetId(), n.GetType(), strings.Join(kv, " ")))
	}
	for _, c := range def.GetConnections() {
		edge := c.GetSource() + ">" + c.GetTarget()
		if c.GetBranch() != "" {
			edge += ":" + c.GetBranch()
		}
		parts = append(parts, edge)
	}
	return strings.ReplaceAll(strings.Join(parts, " | "), base, "S")
}

// planRun is one run of a planned workflow: the incoming data, the
// requests the outside world must see, and the webhook response ("" when
// none; else "<status> <body as JSON>").
type planRun struct {
	data     map[string]any
	requests string
	respond  string
}

func TestPlannerTable(t *testing.T) {
	t.Parallel()
	eng, err := engine.New(engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range plannerCases {
		t.Run(tc.say[0], func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t)
			var say []string
			for _, s := range tc.say {
				say = append(say, strings.ReplaceAll(s, "S/", rec.URL+"/"))
			}
			plan, err := NewPlanner().Plan(t.Context(), userSays(say...), nil)
			if err != nil {
				t.Fatalf("no plan: %v", err)
			}
			if got := shape(plan.Definition, rec.URL); got != tc.shape {
				t.Fatalf("workflow\n got %s\nwant %s", got, tc.shape)
			}
			if got := plan.Triggers[0].GetType(); got != tc.trigger {
				t.Fatalf("trigger %q, want %q", got, tc.trigger)
			}
			for _, run := range tc.runs {
				checkPlanRun(t, eng, plan, rec, run)
			}
		})
	}
}

func checkPlanRun(t *testing.T, eng *engine.Service, plan *Plan, rec *recorder, run planRun) {
	t.Helper()
	data := run.data
	if plan.Triggers[0].GetType() == "webhook" {
		data = map[string]any{"body": run.data, "headers": map[string]any{}, "query": map[string]any{}}
	}
	td, err := structpb.NewStruct(data)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := eng.ExecuteWorkflow(t.Context(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: plan.Definition, TriggerData: td}))
	if err != nil {
		t.Fatalf("%v: %v", run.data, err)
	}
	res := resp.Msg.GetResult()
	if res.GetStatus() != "succeeded" {
		t.Fatalf("%v: status %q: %s", run.data, res.GetStatus(), res.GetError())
	}
	if got := rec.take(); got != run.requests {
		t.Fatalf("%v: requests\n got %q\nwant %q", run.data, got, run.requests)
	}
	respond := ""
	if wr := res.GetWebhookResponse(); wr != nil {
		body, _ := wr.GetBody().MarshalJSON()
		respond = fmt.Sprintf("%d %s", wr.GetStatusCode(), body)
	}
	if respond != run.respond {
		t.Fatalf("%v: response %q, want %q", run.data, respond, run.respond)
	}
}

type plannerCase struct {
	say     []string // S/ stands for the test server
	trigger string
	shape   string
	runs    []planRun
}
