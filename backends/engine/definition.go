package engine

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

const defField = "workflow_definition"

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,63}$`)

// workflow is a validated, compiled definition, ready to run any number of
// times concurrently.
type workflow struct {
	name    string
	nodes   []*node // in definition order
	order   []*node // topological order: every node after its sources
	trigger *node
}

type node struct {
	index int
	pos   int // in topological order
	id    string
	typ   string
	cont  bool // continue_on_error
	in    []*edge
	out   []*edge
	exec  executor
	// upstream is every node with a path to this one, in topological
	// order: the outputs its expressions may read as nodes.<id>.
	upstream []*node
}

type edge struct {
	from, to *node
	branch   string
}

// compileDefinition validates def and compiles its nodes. Every failure is
// a field error naming the node or connection and the field.
func (c *compiler) compileDefinition(def *enginev1.WorkflowDefinition) (*workflow, *fieldError) {
	if def == nil {
		return nil, fieldErrorf(defField, "is required")
	}
	if len(def.GetNodes()) == 0 {
		return nil, fieldErrorf(defField+".nodes", "must contain at least one node")
	}
	if len(def.GetNodes()) > c.maxNodes {
		return nil, fieldErrorf(defField+".nodes", "has %d nodes; at most %d are allowed", len(def.GetNodes()), c.maxNodes)
	}
	wf := &workflow{name: def.GetName()}
	byID := make(map[string]*node, len(def.GetNodes()))
	for i, n := range def.GetNodes() {
		nd, fe := c.compileNode(i, n, byID)
		if fe != nil {
			return nil, fe
		}
		if nd.typ == "trigger" {
			if wf.trigger != nil {
				return nil, fieldErrorf(nodeField(i, "type"), "a workflow has exactly one trigger node; %q is one already", wf.trigger.id)
			}
			wf.trigger = nd
		}
		byID[nd.id] = nd
		wf.nodes = append(wf.nodes, nd)
	}
	if wf.trigger == nil {
		return nil, fieldErrorf(defField+".nodes", "must contain a trigger node")
	}
	if fe := linkNodes(def.GetConnections(), byID); fe != nil {
		return nil, fe
	}
	order, fe := topoSort(wf.nodes, def.GetConnections())
	if fe != nil {
		return nil, fe
	}
	wf.order = order
	if fe := checkReachable(wf); fe != nil {
		return nil, fe
	}
	linkUpstream(wf)
	return wf, nil
}

// linkUpstream numbers the nodes in topological order and gives each its
// upstream nodes.
func linkUpstream(wf *workflow) {
	for i, n := range wf.order {
		n.pos = i
	}
	for _, n := range wf.order {
		seen := make(map[*node]bool)
		for _, e := range n.in {
			for _, u := range append(e.from.upstream, e.from) {
				if !seen[u] {
					seen[u] = true
					n.upstream = append(n.upstream, u)
				}
			}
		}
		slices.SortFunc(n.upstream, func(a, b *node) int { return a.pos - b.pos })
	}
}

func nodeField(i int, field string) string {
	return fmt.Sprintf("%s.nodes[%d].%s", defField, i, field)
}

func connField(i int, field string) string {
	return fmt.Sprintf("%s.connections[%d].%s", defField, i, field)
}

func (c *compiler) compileNode(i int, n *enginev1.Node, byID map[string]*node) (*node, *fieldError) {
	switch id := n.GetId(); {
	case id == "":
		return nil, fieldErrorf(nodeField(i, "id"), "is required")
	case !nodeIDPattern.MatchString(id):
		return nil, fieldErrorf(nodeField(i, "id"), "%q must start with a letter or underscore and hold at most 64 letters, digits, '_' or '-'", id)
	case byID[id] != nil:
		return nil, fieldErrorf(nodeField(i, "id"), "%q is used by nodes[%d] already", id, byID[id].index)
	}
	spec, ok := nodeTypes[n.GetType()]
	if !ok {
		if n.GetType() == "" {
			return nil, fieldErrorf(nodeField(i, "type"), "is required; one of %s", typeNames())
		}
		return nil, fieldErrorf(nodeField(i, "type"), "unknown node type %q; one of %s", n.GetType(), typeNames())
	}
	params := n.GetParameters().AsMap()
	field := nodeField(i, "parameters")
	if fe := checkParams(spec, params, field); fe != nil {
		return nil, fe
	}
	exec, fe := spec.compile(c, params, field)
	if fe != nil {
		fe.Reason = fmt.Sprintf("node %q: %s", n.GetId(), fe.Reason)
		return nil, fe
	}
	return &node{index: i, id: n.GetId(), typ: n.GetType(), cont: n.GetContinueOnError(), exec: exec}, nil
}

// checkParams rejects unknown parameter names (a typo would otherwise be
// silently ignored) and missing required ones.
func checkParams(spec nodeSpec, params map[string]any, field string) *fieldError {
	names := make([]string, 0, len(params))
	for name := range params {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, ok := spec.params[name]; !ok {
			return fieldErrorf(field+"."+name, "unknown parameter; this node type takes %s", paramNames(spec))
		}
	}
	for _, name := range sortedKeys(spec.params) {
		if spec.params[name] && params[name] == nil {
			return fieldErrorf(field+"."+name, "is required")
		}
	}
	return nil
}

func paramNames(spec nodeSpec) string {
	if len(spec.params) == 0 {
		return "no parameters"
	}
	return strings.Join(sortedKeys(spec.params), ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func typeNames() string { return strings.Join(sortedKeys(nodeTypes), ", ") }

// linkNodes resolves the connections into edges.
func linkNodes(conns []*enginev1.Connection, byID map[string]*node) *fieldError {
	seen := make(map[[3]string]int, len(conns))
	for i, c := range conns {
		from, to := byID[c.GetSource()], byID[c.GetTarget()]
		switch {
		case c.GetSource() == "":
			return fieldErrorf(connField(i, "source"), "is required")
		case from == nil:
			return fieldErrorf(connField(i, "source"), "no node has id %q", c.GetSource())
		case c.GetTarget() == "":
			return fieldErrorf(connField(i, "target"), "is required")
		case to == nil:
			return fieldErrorf(connField(i, "target"), "no node has id %q", c.GetTarget())
		case to.typ == "trigger":
			return fieldErrorf(connField(i, "target"), "%q is the trigger node, which takes no input", to.id)
		}
		if fe := checkBranch(i, from, c.GetBranch()); fe != nil {
			return fe
		}
		key := [3]string{from.id, to.id, c.GetBranch()}
		if j, dup := seen[key]; dup {
			return fieldErrorf(connField(i, "target"), "repeats connections[%d]", j)
		}
		seen[key] = i
		e := &edge{from: from, to: to, branch: c.GetBranch()}
		from.out = append(from.out, e)
		to.in = append(to.in, e)
	}
	return nil
}

func checkBranch(i int, from *node, branch string) *fieldError {
	if from.typ == "condition" {
		if branch != "true" && branch != "false" {
			return fieldErrorf(connField(i, "branch"), "a connection from condition node %q needs branch \"true\" or \"false\"", from.id)
		}
		return nil
	}
	if branch != "" {
		return fieldErrorf(connField(i, "branch"), "only connections from a condition node have a branch; %q is a %s node", from.id, from.typ)
	}
	return nil
}

// topoSort orders the nodes so that every node comes after its sources
// (Kahn's algorithm, stable in definition order) and reports a cycle by one
// of the connections that closes it.
func topoSort(nodes []*node, conns []*enginev1.Connection) ([]*node, *fieldError) {
	indeg := make(map[*node]int, len(nodes))
	for _, n := range nodes {
		indeg[n] = len(n.in)
	}
	var ready, order []*node
	for _, n := range nodes {
		if indeg[n] == 0 {
			ready = append(ready, n)
		}
	}
	for len(ready) > 0 {
		n := ready[0]
		ready = ready[1:]
		order = append(order, n)
		for _, e := range n.out {
			indeg[e.to]--
			if indeg[e.to] == 0 {
				ready = append(ready, e.to)
			}
		}
	}
	if len(order) == len(nodes) {
		return order, nil
	}
	return nil, cycleError(nodes, indeg, conns)
}

// cycleError walks back from a node left over by Kahn's algorithm along
// edges whose source is also left over until a node repeats: that is a cycle.
func cycleError(nodes []*node, indeg map[*node]int, conns []*enginev1.Connection) *fieldError {
	var start *node
	for _, n := range nodes {
		if indeg[n] > 0 {
			start = n
			break
		}
	}
	var path []*node
	onPath := map[*node]int{}
	cur := start
	for {
		if at, ok := onPath[cur]; ok {
			path = path[at:]
			break
		}
		onPath[cur] = len(path)
		path = append(path, cur)
		for _, e := range cur.in {
			if indeg[e.from] > 0 {
				cur = e.from
				break
			}
		}
	}
	slices.Reverse(path) // edges now run path[i] -> path[i+1]
	ids := make([]string, 0, len(path)+1)
	for _, n := range path {
		ids = append(ids, n.id)
	}
	ids = append(ids, path[0].id)
	closing := 0
	last, first := path[len(path)-1], path[0]
	for i, c := range conns {
		if c.GetSource() == last.id && c.GetTarget() == first.id {
			closing = i
			break
		}
	}
	return fieldErrorf(connField(closing, "target"), "creates a cycle: %s", strings.Join(ids, " -> "))
}

// checkReachable rejects nodes no path from the trigger reaches: they could
// never run, which is almost certainly a mistake in the definition.
func checkReachable(wf *workflow) *fieldError {
	reached := map[*node]bool{wf.trigger: true}
	for _, n := range wf.order {
		if !reached[n] {
			continue
		}
		for _, e := range n.out {
			reached[e.to] = true
		}
	}
	for _, n := range wf.nodes {
		if !reached[n] {
			return fieldErrorf(nodeField(n.index, "id"), "node %q is not reachable from the trigger node", n.id)
		}
	}
	return nil
}
