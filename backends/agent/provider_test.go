package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

func userSays(texts ...string) Conversation {
	var c Conversation
	for _, t := range texts {
		c.Turns = append(c.Turns, Turn{Role: RoleUser, Content: t})
	}
	return c
}

func TestPlannerBuildsValidWorkflows(t *testing.T) {
	t.Parallel()
	eng, err := engine.New(engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		say     []string
		trigger string
		nodes   string // node types in order
		expr    string
	}{
		{[]string{orderRequest}, "webhook", "trigger condition http_request", "trigger.body.amount > 100"},
		{[]string{"When a payment below 20 comes in, reply with 202 'too small', otherwise forward it to https://ledger.example.com/in"},
			"webhook", "trigger condition respond http_request", "trigger.body.amount < 20"},
		{[]string{"Every 15 minutes GET https://status.example.com/ping"}, "schedule", "trigger http_request", ""},
		{[]string{"every day at 9am call https://example.com/report"}, "schedule", "trigger http_request", ""},
		{[]string{"when a webhook receives a reading where temperature is at least 30, wait 10 seconds then POST it to https://alerts.example.com/hot"},
			"webhook", "trigger condition delay http_request", "trigger.body.temperature >= 30"},
		{[]string{"a webhook that receives orders", "only the ones over 50", "post them to https://example.com/big"},
			"webhook", "trigger condition http_request", "trigger.body.amount > 50"},
		{[]string{"when I run it manually, PUT https://example.com/sync"}, "manual", "trigger http_request", ""},
		{[]string{"When a webhook receives a ticket, respond with 'thanks'"}, "webhook", "trigger respond", ""},
	} {
		plan, err := NewPlanner().Plan(t.Context(), userSays(tc.say...), nil)
		if err != nil {
			t.Errorf("%q: %v", tc.say, err)
			continue
		}
		var typesSeen []string
		expr := ""
		for _, n := range plan.Definition.GetNodes() {
			typesSeen = append(typesSeen, n.GetType())
			if n.GetType() == "condition" {
				expr = n.GetParameters().GetFields()["expression"].GetStringValue()
			}
		}
		if got := strings.Join(typesSeen, " "); got != tc.nodes || expr != tc.expr || plan.Triggers[0].GetType() != tc.trigger {
			t.Errorf("%q: nodes %q expr %q trigger %q", tc.say, got, expr, plan.Triggers[0].GetType())
		}
		_, err = eng.ExecuteWorkflow(t.Context(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: plan.Definition, ValidateOnly: true}))
		if err != nil {
			t.Errorf("%q: the engine rejects the plan: %v", tc.say, err)
		}
		again, _ := NewPlanner().Plan(t.Context(), userSays(tc.say...), nil)
		a, _ := json.Marshal(jsonValue(plan.Definition))
		b, _ := json.Marshal(jsonValue(again.Definition))
		if string(a) != string(b) {
			t.Errorf("%q: planning is not deterministic", tc.say)
		}
	}
}

func TestPlannerAsksInsteadOfGuessing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ say, want string }{
		{"hello there", "I build workflows"},
		{"send new orders to slack", "URL"},
		{"POST every order to https://example.com/orders", "What should start"},
		{"when a webhook receives something", "What should the workflow do"},
		{"when a webhook receives data over 100, post it to https://example.com/x", "Which field"},
		{"every 90 minutes call https://example.com/x", "schedule"},
	} {
		_, err := NewPlanner().Plan(t.Context(), userSays(tc.say), nil)
		q, ok := needDetails(err)
		if !ok || !strings.Contains(q, tc.want) {
			t.Errorf("%q: got %v, want a question about %q", tc.say, err, tc.want)
		}
		var reply strings.Builder
		if err := NewPlanner().Reply(t.Context(), userSays(tc.say), func(p string) error { reply.WriteString(p); return nil }); err != nil || reply.String() != q {
			t.Errorf("%q: reply %q does not ask %q", tc.say, reply.String(), q)
		}
	}
}

// fakeOpenAI is an OpenAI-compatible server: streamed replies in chunks,
// and plan completions taken from a queue.
type fakeOpenAI struct {
	mu     sync.Mutex
	plans  []string
	bodies []map[string]any
	auth   []string
}

func (f *fakeOpenAI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/chat/completions" {
		http.NotFound(w, r)
		return
	}
	var body map[string]any
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.auth = append(f.auth, r.Header.Get("Authorization"))
	f.mu.Unlock()
	if body["stream"] == true {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, piece := range []string{"I will ", "POST orders over 100 ", "to https://example.com/orders."} {
			chunk, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"delta": map[string]any{"content": piece}}}})
			fmt.Fprintf(w, "data: %s\n\n", chunk)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		return
	}
	f.mu.Lock()
	if len(f.plans) == 0 {
		f.mu.Unlock()
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprint(w, `{"error":{"message":"rate limited"}}`)
		return
	}
	content := f.plans[0]
	f.plans = f.plans[1:]
	f.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": content}}}})
}

const badPlan = `{"status":"ready","name":"Big orders","trigger":{"type":"webhook","path":"orders"},
"workflow_definition":{"name":"Big orders","nodes":[{"id":"t","type":"trigger"},{"id":"c","type":"condition","parameters":{"expression":"trigger.body.amount >"}}],
"connections":[{"source":"t","target":"c"}]}}`

const goodPlan = "```json\n" + `{"status":"ready","name":"Big orders","description":"POST big orders","trigger":{"type":"webhook","path":"orders","secret":"model-made"},
"workflow_definition":{"name":"Big orders","nodes":[{"id":"t","type":"trigger","parameters":{"source":"webhook"}},
{"id":"c","type":"condition","parameters":{"expression":"trigger.body.amount > 100"}},
{"id":"h","type":"http_request","parameters":{"method":"POST","url":"https://example.com/orders","body":"{{ trigger.body }}"}}],
"connections":[{"source":"t","target":"c"},{"source":"c","target":"h","branch":"true"}]}}` + "\n```"

func TestOpenAIProviderStreamsPlansAndRepairs(t *testing.T) {
	t.Parallel()
	fake := &fakeOpenAI{plans: []string{badPlan, goodPlan}}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	provider, err := NewOpenAI(OpenAIConfig{BaseURL: srv.URL + "/v1", APIKey: "sk-test", Model: "test-model"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{provider: provider})
	id := e.session(t, "")
	pieces := e.chat(t, "", id, orderRequest)
	if len(pieces) != 3 || strings.Join(pieces, "") != "I will POST orders over 100 to https://example.com/orders." {
		t.Errorf("reply pieces %q", pieces)
	}
	events := e.watch(t, "", id, "", nil)
	got := strings.Join(types(events), " ")
	want := "waiting start draft debugging:validate:failed draft debugging:validate:passed debugging:dry_run:skipped complete"
	if got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	dep := e.runtime.get(events[len(events)-1].GetWorkflowId())
	if dep == nil || dep.GetTriggers()[0].GetSecret() != "" {
		t.Errorf("deployment %v (a model must not set secrets)", dep)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.bodies) != 3 || fake.auth[0] != "Bearer sk-test" || fake.bodies[0]["model"] != "test-model" {
		t.Fatalf("calls %d, auth %q", len(fake.bodies), fake.auth)
	}
	// The repair call carries the engine's findings.
	msgs, _ := json.Marshal(fake.bodies[2]["messages"])
	if !strings.Contains(string(msgs), "Validation found these problems") || !strings.Contains(string(msgs), "expression") {
		t.Errorf("repair request lacks the problems: %s", msgs)
	}
}

func TestOpenAIProviderErrors(t *testing.T) {
	t.Parallel()
	fake := &fakeOpenAI{plans: []string{`{"status":"need_details","question":"Which URL?"}`, `not json`}}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	p, err := NewOpenAI(OpenAIConfig{BaseURL: srv.URL + "/v1", Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Plan(t.Context(), userSays("x"), nil); err == nil {
		t.Fatal("need_details accepted as a plan")
	} else if q, ok := needDetails(err); !ok || q != "Which URL?" {
		t.Errorf("need_details: %v", err)
	}
	if _, err := p.Plan(t.Context(), userSays("x"), nil); err == nil || !strings.Contains(err.Error(), "not JSON") {
		t.Errorf("non-JSON plan: %v", err)
	}
	if _, err := p.Plan(t.Context(), userSays("x"), nil); err == nil || !strings.Contains(err.Error(), "HTTP 429: rate limited") {
		t.Errorf("HTTP error: %v", err)
	}
	if err := readStream(strings.NewReader("data: {\"choices\":[]}\n\n"), func(string) error { return nil }); err == nil {
		t.Error("a stream cut before [DONE] was accepted")
	}
	for _, cfg := range []OpenAIConfig{{BaseURL: "ftp://x", Model: "m"}, {BaseURL: "http://x"}} {
		if _, err := NewOpenAI(cfg); err == nil {
			t.Errorf("NewOpenAI accepted %+v", cfg)
		}
	}
	_ = context.Background
}
