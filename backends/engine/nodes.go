package engine

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"
)

// executor runs one node. It returns the node's output, and for a
// condition the branch taken; a respond node also returns its response.
type executor interface {
	run(ctx context.Context, r *run, in *exprEnv) (outcome, error)
}

type outcome struct {
	output   any
	branch   string
	response *webhookResponse
}

type webhookResponse struct {
	status  int
	headers map[string]string
	body    any
}

// nodeSpec describes a node type: its parameters (name -> required) and
// how to compile a node of it.
type nodeSpec struct {
	params  map[string]bool
	compile func(c *compiler, params map[string]any, field string) (executor, *fieldError)
}

// nodeTypes is the registry of node types; see the proto's Node.type.
var nodeTypes map[string]nodeSpec

func init() {
	nodeTypes = map[string]nodeSpec{
		"trigger":      {params: map[string]bool{"source": false}, compile: compileTrigger},
		"set":          {params: map[string]bool{"values": true, "keep_input": false}, compile: compileSet},
		"condition":    {params: map[string]bool{"expression": true}, compile: compileCondition},
		"http_request": {params: httpParams, compile: compileHTTP},
		"delay":        {params: map[string]bool{"duration": true}, compile: compileDelay},
		"merge":        {params: map[string]bool{"mode": false}, compile: compileMerge},
		"respond":      {params: map[string]bool{"status_code": false, "headers": false, "body": false}, compile: compileRespond},
		"for_each":     {params: map[string]bool{"items": true, "steps": true, "max_items": false, "concurrency": false}, compile: compileLoop},
	}
}

// trigger: its output is the run's trigger data.

type triggerNode struct{}

func compileTrigger(_ *compiler, params map[string]any, field string) (executor, *fieldError) {
	if src, ok := params["source"]; ok {
		switch src {
		case "manual", "webhook", "schedule":
		default:
			return nil, fieldErrorf(field+".source", "must be manual, webhook or schedule")
		}
	}
	return triggerNode{}, nil
}

func (triggerNode) run(_ context.Context, _ *run, in *exprEnv) (outcome, error) {
	return outcome{output: in.Trigger}, nil
}

// set: builds fields, by default on top of its input object. Dotted keys
// ("customer.name") set nested fields.

type setNode struct {
	values    mapTemplate
	keepInput bool
}

func compileSet(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	raw, ok := params["values"].(map[string]any)
	if !ok {
		return nil, fieldErrorf(field+".values", "must be an object of field names to values")
	}
	if len(raw) == 0 {
		return nil, fieldErrorf(field+".values", "must set at least one field")
	}
	for key := range raw {
		if key == "" || strings.HasPrefix(key, ".") || strings.HasSuffix(key, ".") || strings.Contains(key, "..") {
			return nil, fieldErrorf(field+".values", "%q is not a field name or dotted path", key)
		}
	}
	t, fe := compileTemplate(raw, field+".values", c.expr)
	if fe != nil {
		return nil, fe
	}
	keep := true
	if v, ok := params["keep_input"]; ok {
		b, isBool := v.(bool)
		if !isBool {
			return nil, fieldErrorf(field+".keep_input", "must be true or false")
		}
		keep = b
	}
	return &setNode{values: t.(mapTemplate), keepInput: keep}, nil
}

func (s *setNode) run(ctx context.Context, r *run, in *exprEnv) (outcome, error) {
	vals, err := s.values.eval(ctx, in, r.limits.expr)
	if err != nil {
		return outcome{}, err
	}
	out := map[string]any{}
	if obj, ok := in.Input.(map[string]any); ok && s.keepInput {
		out = deepCopy(obj).(map[string]any)
	}
	for _, key := range sortedKeys(vals.(map[string]any)) {
		setPath(out, strings.Split(key, "."), vals.(map[string]any)[key])
	}
	return outcome{output: out}, nil
}

func setPath(obj map[string]any, path []string, v any) {
	for _, key := range path[:len(path)-1] {
		next, ok := obj[key].(map[string]any)
		if !ok {
			next = map[string]any{}
			obj[key] = next
		}
		obj = next
	}
	obj[path[len(path)-1]] = v
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, item := range v {
			out[k] = deepCopy(item)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			out[i] = deepCopy(item)
		}
		return out
	}
	return v
}

// condition: evaluates a boolean expression; its input passes through and
// only the connections of the matching branch fire.

type conditionNode struct{ expr *program }

func compileCondition(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	src, ok := params["expression"].(string)
	if !ok {
		return nil, fieldErrorf(field+".expression", "must be a string")
	}
	src = strings.TrimSpace(src)
	if strings.HasPrefix(src, "{{") && strings.HasSuffix(src, "}}") {
		src = src[2 : len(src)-2]
	}
	prog, err := compileExpr(src, c.expr)
	if err != nil {
		return nil, fieldErrorf(field+".expression", "%s", err.Error())
	}
	if what := neverBoolean(prog); what != "" {
		return nil, fieldErrorf(field+".expression", "%q is always %s, never true or false; a condition needs a comparison or test, e.g. input.priority == \"high\"", src, what)
	}
	return &conditionNode{expr: prog}, nil
}

func (n *conditionNode) run(ctx context.Context, r *run, in *exprEnv) (outcome, error) {
	v, err := n.expr.eval(ctx, in, r.limits.expr)
	if err != nil {
		return outcome{}, err
	}
	ok, err := truthy(v)
	if err != nil {
		return outcome{}, err
	}
	return outcome{output: in.Input, branch: fmt.Sprint(ok)}, nil
}

// delay: waits, bounded by the engine's maximum and the run's deadline.

type delayNode struct{ d time.Duration }

func compileDelay(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	d, err := durationParam(params["duration"])
	if err != nil {
		return nil, fieldErrorf(field+".duration", "%s", err.Error())
	}
	if d <= 0 || d > c.maxDelay {
		return nil, fieldErrorf(field+".duration", "must be more than 0 and at most %s", c.maxDelay)
	}
	return &delayNode{d: d}, nil
}

func (n *delayNode) run(ctx context.Context, _ *run, in *exprEnv) (outcome, error) {
	if err := sleep(ctx, n.d); err != nil {
		return outcome{}, err
	}
	return outcome{output: in.Input}, nil
}

// merge: joins the outputs of every input that ran, in connection order,
// as a list ("append") or one object ("merge_objects", later keys win).

type mergeNode struct{ objects bool }

func compileMerge(_ *compiler, params map[string]any, field string) (executor, *fieldError) {
	switch params["mode"] {
	case nil, "append":
		return &mergeNode{}, nil
	case "merge_objects":
		return &mergeNode{objects: true}, nil
	default:
		return nil, fieldErrorf(field+".mode", "must be append or merge_objects")
	}
}

func (n *mergeNode) run(_ context.Context, _ *run, in *exprEnv) (outcome, error) {
	items, _ := in.Input.([]any)
	if !n.objects {
		return outcome{output: items}, nil
	}
	out := map[string]any{}
	for i, item := range items {
		obj, ok := item.(map[string]any)
		if !ok {
			return outcome{}, fmt.Errorf("merge_objects: input %d is %s, not an object", i+1, kindOf(item))
		}
		maps.Copy(out, obj)
	}
	return outcome{output: out}, nil
}

// respond: decides what a waiting webhook caller gets back.

type respondNode struct {
	status  int
	headers mapTemplate
	body    template // nil: the input
}

func compileRespond(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	n := &respondNode{status: 200}
	if v, ok := params["status_code"]; ok {
		code, err := intParam(v)
		if err != nil || code < 200 || code > 599 {
			return nil, fieldErrorf(field+".status_code", "must be an HTTP status code from 200 to 599")
		}
		n.status = int(code)
	}
	if v, ok := params["headers"]; ok {
		h, fe := compileHeaders(c, v, field+".headers")
		if fe != nil {
			return nil, fe
		}
		n.headers = h
	}
	if v, ok := params["body"]; ok {
		t, fe := compileTemplate(v, field+".body", c.expr)
		if fe != nil {
			return nil, fe
		}
		n.body = t
	}
	return n, nil
}

func (n *respondNode) run(ctx context.Context, r *run, in *exprEnv) (outcome, error) {
	body := in.Input
	if n.body != nil {
		v, err := n.body.eval(ctx, in, r.limits.expr)
		if err != nil {
			return outcome{}, err
		}
		body = v
	}
	headers, err := evalHeaders(ctx, n.headers, in, r)
	if err != nil {
		return outcome{}, err
	}
	resp := &webhookResponse{status: n.status, headers: headers, body: body}
	return outcome{output: body, response: resp}, nil
}

// compileHeaders compiles an object of header names to string templates.
func compileHeaders(c *compiler, v any, field string) (mapTemplate, *fieldError) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fieldErrorf(field, "must be an object of header names to values")
	}
	for name, val := range obj {
		if !validHeaderName(name) {
			return nil, fieldErrorf(field+"."+name, "is not a valid header name")
		}
		if _, ok := val.(string); !ok {
			return nil, fieldErrorf(field+"."+name, "must be a string")
		}
	}
	t, fe := compileTemplate(obj, field, c.expr)
	if fe != nil {
		return nil, fe
	}
	return t.(mapTemplate), nil
}

func evalHeaders(ctx context.Context, t mapTemplate, in *exprEnv, r *run) (map[string]string, error) {
	if t == nil {
		return nil, nil
	}
	v, err := t.eval(ctx, in, r.limits.expr)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(t))
	for name, val := range v.(map[string]any) {
		s := textOf(val)
		if strings.ContainsAny(s, "\r\n\x00") {
			return nil, fmt.Errorf("header %q: value contains a line break", name)
		}
		out[name] = s
	}
	return out, nil
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
