package agent

import (
	"regexp"
	"strconv"
	"strings"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

var reExpression = regexp.MustCompile(`^trigger(\.body)?\.([a-z][a-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?|"[^"]*")$`)

// requestFromDefinition reads back a workflow of the shapes the planner
// builds (trigger, optional condition, chains of calls and waits, and
// responses), so an edit can change one part and keep the rest. Any other
// shape reports false.
func requestFromDefinition(def *enginev1.WorkflowDefinition) (*request, bool) {
	nodes := map[string]*enginev1.Node{}
	var trigger, check *enginev1.Node
	for _, n := range def.GetNodes() {
		nodes[n.GetId()] = n
		switch n.GetType() {
		case "trigger":
			trigger = n
		case "condition":
			if check != nil {
				return nil, false
			}
			check = n
		case "http_request", "delay", "respond":
		default:
			return nil, false
		}
	}
	if trigger == nil {
		return nil, false
	}
	r := &request{trigger: trigger.GetParameters().GetFields()["source"].GetStringValue()}
	if r.trigger == "" {
		r.trigger = "manual"
	}
	next := func(from, branch string) *enginev1.Node {
		for _, c := range def.GetConnections() {
			if c.GetSource() == from && c.GetBranch() == branch {
				return nodes[c.GetTarget()]
			}
		}
		return nil
	}
	var ok bool
	if check == nil {
		r.actions, r.respond, ok = readChain(next, next(trigger.GetId(), ""))
		return r, ok
	}
	m := reExpression.FindStringSubmatch(check.GetParameters().GetFields()["expression"].GetStringValue())
	if m == nil || next(trigger.GetId(), "") != check {
		return nil, false
	}
	r.cond = &condition{field: m[2], op: m[3]}
	if v, err := strconv.ParseFloat(m[4], 64); err == nil {
		r.cond.value = v
	} else {
		r.cond.value, _ = strconv.Unquote(m[4])
	}
	if r.actions, r.respond, ok = readChain(next, next(check.GetId(), "true")); !ok {
		return nil, false
	}
	r.otherwise, r.otherwiseRespond, ok = readChain(next, next(check.GetId(), "false"))
	return r, ok
}

func readChain(next func(string, string) *enginev1.Node, n *enginev1.Node) ([]action, *response, bool) {
	var actions []action
	for seen := 0; n != nil; seen++ {
		if seen > 64 {
			return nil, nil, false
		}
		p := n.GetParameters().GetFields()
		switch n.GetType() {
		case "http_request":
			method := p["method"].GetStringValue()
			if method == "" {
				method = "GET"
			}
			fromPrev := strings.HasPrefix(p["body"].GetStringValue(), "{{ nodes.")
			actions = append(actions, action{kind: "http", method: method, url: p["url"].GetStringValue(), fromPrev: fromPrev})
		case "delay":
			actions = append(actions, action{kind: "delay", delay: p["duration"].GetStringValue()})
		case "respond":
			resp := &response{status: 200, body: p["body"].GetStringValue()}
			if v := p["status_code"].GetNumberValue(); v != 0 {
				resp.status = int(v)
			}
			return actions, resp, next(n.GetId(), "") == nil
		default:
			return nil, nil, false
		}
		n = next(n.GetId(), "")
	}
	return actions, nil, true
}
