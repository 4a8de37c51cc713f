package agent

import (
	"context"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// Planner is the offline [Provider]: it understands common workflow
// requests ("when a webhook receives an order over 100, POST it to
// https://example.com/orders") by their wording and builds the workflow
// deterministically, with no network. What it cannot understand it asks
// about; it never invents a workflow.
type Planner struct{}

// NewPlanner returns the offline planner.
func NewPlanner() *Planner { return &Planner{} }

var _ Provider = (*Planner)(nil)

// Reply describes the plan step by step, or asks for what is missing.
func (p *Planner) Reply(ctx context.Context, conv Conversation, emit func(string) error) error {
	req, question := understand(conv)
	var pieces []string
	if question != "" {
		pieces = sentences(question)
	} else {
		pieces = req.describe()
	}
	for _, piece := range pieces {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := emit(piece); err != nil {
			return err
		}
	}
	return nil
}

// Plan builds the workflow the conversation describes. Problems reported
// by validation cannot be repaired by re-reading the same words, so they
// are surfaced to the user as a question.
func (p *Planner) Plan(_ context.Context, conv Conversation, problems []string) (*Plan, error) {
	if len(problems) > 0 {
		return nil, &NeedDetailsError{Question: "The workflow I drafted is not valid (" + strings.Join(problems, "; ") + "). Could you rephrase that part?"}
	}
	req, question := understand(conv)
	if question != "" {
		return nil, &NeedDetailsError{Question: question}
	}
	return req.plan(), nil
}

// understand reads the conversation: the current workflow first, then the
// user's messages in order, each overriding what it speaks about.
func understand(conv Conversation) (*request, string) {
	req := &request{}
	fromWorkflow := false
	if conv.Current != nil && len(conv.Current.GetNodes()) > 0 {
		base, ok := requestFromDefinition(conv.Current)
		if !ok {
			return nil, "This workflow has steps I can only rebuild from a full description. Describe the whole workflow as it should be: what starts it, what it checks and what it does."
		}
		req, fromWorkflow = base, true
	}
	said := false
	for _, t := range conv.Turns {
		if t.Role != RoleUser {
			continue
		}
		next := parseMessage(t.Content)
		if next.trigger != "" || next.cond != nil || len(next.actions) > 0 || len(next.otherwise) > 0 ||
			next.respond != nil || next.otherwiseRespond != nil || next.vagueAction != "" {
			said = true
		}
		req.merge(next)
	}
	if !said && !fromWorkflow {
		return nil, "I build workflows from a description. Tell me what starts it (a webhook, a schedule like \"every hour\", or a manual run), any condition (like \"orders over 100\"), and what to do (like \"POST it to https://example.com/orders\")."
	}
	if !said {
		return nil, "What would you like to change in this workflow? For example the condition (\"only orders over 200\") or where it sends data (\"POST it to https://example.com/new\")."
	}
	return req, req.question()
}

// question is what the planner must ask before it can build, "" when
// nothing is missing.
func (r *request) question() string {
	switch {
	case r.vagueAction != "" && !hasHTTP(r.actions) && !hasHTTP(r.otherwise):
		return fmt.Sprintf("Where should I %s it? Give the full URL of the endpoint, like https://example.com/orders.", verbFor(r.vagueAction))
	case r.trigger == "":
		return "What should start the workflow: a webhook that receives data, a schedule (for example \"every 15 minutes\"), or a manual run?"
	case r.trigger == "schedule" && r.cron == "":
		return "I could not read that schedule. Say for example \"every 15 minutes\", \"every 2 hours\" or \"every day at 9am\"."
	case len(r.actions) == 0 && r.respond == nil && len(r.otherwise) == 0 && r.otherwiseRespond == nil:
		return "What should the workflow do? For example \"POST it to https://example.com/orders\", \"wait 30 seconds\", or \"respond with 'ok'\"."
	case r.cond != nil && r.cond.field == "":
		return fmt.Sprintf("Which field of the incoming data should be compared with %v? For example \"amount over %v\".", r.cond.value, r.cond.value)
	case (r.respond != nil || r.otherwiseRespond != nil) && r.trigger != "webhook":
		return "Only a webhook caller can get a response. Should the workflow start from a webhook instead?"
	case len(r.otherwise) > 0 || r.otherwiseRespond != nil:
		if r.cond == nil {
			return "You said what to do otherwise, but not the condition. What should be checked, for example \"if the amount is over 100\"?"
		}
	}
	for _, a := range append(append([]action{}, r.actions...), r.otherwise...) {
		if a.kind == "http" {
			if u, err := url.Parse(a.url); err != nil || u.Host == "" {
				return fmt.Sprintf("%q is not a URL I can call. Give a full address like https://example.com/orders.", a.url)
			}
		}
	}
	return ""
}

func verbFor(word string) string {
	switch word {
	case "email", "slack", "message":
		return "send"
	}
	return word
}

// dataRoot is where the incoming data sits in the trigger data: a webhook's
// JSON body, or the trigger data itself for manual and scheduled runs.
func (r *request) dataRoot() string {
	if r.trigger == "webhook" {
		return "trigger.body"
	}
	return "trigger"
}

func (c *condition) expression(root string) string {
	v := ""
	switch val := c.value.(type) {
	case float64:
		v = strconv.FormatFloat(val, 'f', -1, 64)
	case string:
		v = strconv.Quote(val)
	}
	return fmt.Sprintf("%s.%s %s %s", root, c.field, c.op, v)
}

// plan builds the workflow: trigger, then the condition (if any) with its
// two branches, each a chain of calls and waits ending in a response.
func (r *request) plan() *Plan {
	b := &builder{def: &enginev1.WorkflowDefinition{Name: r.name()}}
	b.node("trigger", "trigger", triggerName(r), map[string]any{"source": r.trigger})
	if r.cond == nil {
		b.chain(r, "trigger", "", "", r.actions, r.respond)
	} else {
		b.node("check", "condition", "Check "+r.cond.field, map[string]any{"expression": r.cond.expression(r.dataRoot())})
		b.connect("trigger", "check", "")
		b.chain(r, "check", "true", "", r.actions, r.respond)
		b.chain(r, "check", "false", "otherwise_", r.otherwise, r.otherwiseRespond)
	}
	b.def.Name = r.name()
	return &Plan{
		Name:        r.name(),
		Description: strings.Join(r.describe()[:len(r.describe())-1], " "),
		Definition:  b.def,
		Triggers:    []*runtimev1.Trigger{r.runtimeTrigger()},
		SampleInput: r.sample(),
	}
}

type builder struct{ def *enginev1.WorkflowDefinition }

func (b *builder) node(id, typ, name string, params map[string]any) {
	s, err := structpb.NewStruct(params)
	if err != nil {
		panic(fmt.Sprintf("agent: planner built unencodable parameters for %q: %v", id, err)) // only strings, numbers, maps
	}
	b.def.Nodes = append(b.def.Nodes, &enginev1.Node{Id: id, Type: typ, Name: name, Parameters: s})
}

func (b *builder) connect(from, to, branch string) {
	b.def.Connections = append(b.def.Connections, &enginev1.Connection{Source: from, Target: to, Branch: branch})
}

func (b *builder) chain(r *request, from, branch, prefix string, actions []action, resp *response) {
	calls, waits, prevCall := 0, 0, ""
	for _, a := range actions {
		var id string
		switch a.kind {
		case "http":
			calls++
			id = fmt.Sprintf("%scall_%d", prefix, calls)
			params := map[string]any{"method": a.method, "url": a.url}
			switch {
			case a.fromPrev && prevCall != "":
				params["body"] = "{{ nodes." + prevCall + ".body }}"
			case a.method == "POST" || a.method == "PUT" || a.method == "PATCH":
				params["body"] = "{{ " + r.dataRoot() + " }}"
			}
			b.node(id, "http_request", a.method+" "+hostOf(a.url), params)
			prevCall = id
		case "delay":
			waits++
			id = fmt.Sprintf("%swait_%d", prefix, waits)
			b.node(id, "delay", "Wait "+a.delay, map[string]any{"duration": a.delay})
		}
		b.connect(from, id, branch)
		from, branch = id, ""
	}
	if resp != nil {
		id := prefix + "respond"
		params := map[string]any{"status_code": float64(resp.status)}
		if resp.body != "" {
			params["body"] = resp.body
		}
		b.node(id, "respond", fmt.Sprintf("Respond %d", resp.status), params)
		b.connect(from, id, branch)
	}
}

func (r *request) runtimeTrigger() *runtimev1.Trigger {
	switch r.trigger {
	case "webhook":
		mode := "async"
		if r.respond != nil || r.otherwiseRespond != nil {
			mode = "wait"
		}
		return &runtimev1.Trigger{Type: "webhook", Path: slug(r.subject()), ResponseMode: mode}
	case "schedule":
		return &runtimev1.Trigger{Type: "schedule", Cron: r.cron}
	default:
		return &runtimev1.Trigger{Type: "manual"}
	}
}

// sample is trigger data that takes the condition's true branch, for a
// dry run.
func (r *request) sample() *structpb.Struct {
	data := map[string]any{}
	if r.cond != nil {
		switch v := r.cond.value.(type) {
		case float64:
			switch r.cond.op {
			case ">":
				v++
			case "<":
				v--
			}
			data[r.cond.field] = v
		case string:
			if r.cond.op == "!=" {
				v = "not " + v
			}
			data[r.cond.field] = v
		}
	}
	if r.trigger == "webhook" {
		data = map[string]any{"body": data, "headers": map[string]any{}, "query": map[string]any{}}
	}
	s, err := structpb.NewStruct(data)
	if err != nil {
		return nil
	}
	return s
}

func triggerName(r *request) string {
	switch r.trigger {
	case "webhook":
		return "Receive " + r.subject()
	case "schedule":
		return "Run " + r.every
	}
	return "Manual start"
}

func (r *request) subject() string {
	if r.entity != "" {
		return r.entity + "s"
	}
	if r.trigger == "webhook" {
		return "webhook"
	}
	return "run"
}

var opWords = map[string]string{">": "over", ">=": "at least", "<": "under", "<=": "at most", "==": "equal to", "!=": "not equal to"}

func (r *request) name() string {
	var b strings.Builder
	switch r.trigger {
	case "schedule":
		b.WriteString("Scheduled run " + r.every)
	case "manual":
		b.WriteString("Manual run")
	default:
		b.WriteString(strings.ToUpper(r.subject()[:1]) + r.subject()[1:])
	}
	if r.cond != nil {
		fmt.Fprintf(&b, " with %s %s %v", r.cond.field, opWords[r.cond.op], r.cond.value)
	}
	for _, a := range r.actions {
		if a.kind == "http" {
			b.WriteString(" to " + hostOf(a.url))
			break
		}
	}
	name := b.String()
	if len(name) > 100 {
		name = name[:100]
	}
	return name
}

// describe is the plan in words, one piece per step; the last piece says
// what happens next.
func (r *request) describe() []string {
	var out []string
	switch r.trigger {
	case "webhook":
		out = append(out, fmt.Sprintf("Here is the plan. A webhook receives %s as JSON.", r.subject()))
	case "schedule":
		out = append(out, fmt.Sprintf("Here is the plan. The workflow runs %s (cron %q).", r.every, r.cron))
	default:
		out = append(out, "Here is the plan. The workflow runs when you start it by hand.")
	}
	if r.cond != nil {
		out = append(out, fmt.Sprintf(" It checks whether the %s field is %s %v (`%s`).", r.cond.field, opWords[r.cond.op], r.cond.value, r.cond.expression(r.dataRoot())))
	}
	lead := " Then it"
	if r.cond != nil {
		lead = " If so, it"
	}
	out = append(out, describeChain(lead, r.actions, r.respond)...)
	if r.cond != nil && (len(r.otherwise) > 0 || r.otherwiseRespond != nil) {
		out = append(out, describeChain(" Otherwise it", r.otherwise, r.otherwiseRespond)...)
	} else if r.cond != nil {
		out = append(out, " Otherwise it stops.")
	}
	return append(out, " I'm validating and deploying it now; the generation stream shows each step.")
}

func describeChain(lead string, actions []action, resp *response) []string {
	var out []string
	for _, a := range actions {
		switch a.kind {
		case "http":
			with := ""
			if a.fromPrev {
				with = " with what the call before it returned"
			}
			out = append(out, fmt.Sprintf("%s sends a %s request to %s%s.", lead, a.method, a.url, with))
		case "delay":
			out = append(out, fmt.Sprintf("%s waits %s.", lead, a.delay))
		}
		lead = " Then it"
	}
	if resp != nil {
		body := "the data"
		if resp.body != "" {
			body = strconv.Quote(resp.body)
		}
		out = append(out, fmt.Sprintf("%s answers the caller with status %d and %s.", lead, resp.status, body))
	}
	return out
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Host
	}
	return raw
}

var reSlug = regexp.MustCompile(`[^a-z0-9]+`)

func slug(s string) string {
	out := strings.Trim(reSlug.ReplaceAllString(strings.ToLower(s), "-"), "-")
	if out == "" {
		return "webhook"
	}
	return out
}

var reSentence = regexp.MustCompile(`[^.?!]+[.?!]*\s*`)

func sentences(text string) []string {
	out := reSentence.FindAllString(text, -1)
	if len(out) == 0 {
		return []string{text}
	}
	return out
}
