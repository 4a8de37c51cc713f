package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
)

// exprEnv is what an expression sees. Its fields are untyped so that any
// JSON shape of trigger data and node outputs can be navigated; unknown
// top-level names are still rejected when the workflow is validated.
type exprEnv struct {
	// Trigger is the run's trigger data.
	Trigger any `expr:"trigger"`
	// Input is the node's input: the output of the node before it (a list
	// of outputs for a merge node).
	Input any `expr:"input"`
	// Nodes maps the id of every node upstream of this one that has run to
	// its output (in for_each steps, also the earlier steps of the item).
	Nodes map[string]any `expr:"nodes"`
	// Item and Index are, in a for_each node's steps, the list item the
	// steps run for and its position from 0; nil elsewhere.
	Item  any `expr:"item"`
	Index any `expr:"index"`
	// Guard is the evaluation's budget, passed by the compiler to every
	// guarded call; expressions cannot name it.
	Guard *evalGuard `expr:"__guard"`

	budget *runBudget // the run's, shared by all its evaluations
}

// exprLimits bound what one expression, and the expressions and outputs
// of one run together, may cost.
type exprLimits struct {
	maxNodes     uint          // AST nodes, checked when compiled
	maxLength    int           // bytes of source, checked when compiled
	memoryBudget uint          // allocation units of the VM, checked while running
	timeout      time.Duration // wall clock per evaluation
	maxValue     int64         // bytes of any one value or node output
	runMemory    int64         // bytes a run may build, outputs included
	runCPU       time.Duration // evaluation time of all of a run's expressions
}

var errExprTimeout = fmt.Errorf("%w: the expression exceeded its time limit", errResourceExhausted)

// program is one compiled expression.
type program struct {
	src  string
	prog *vm.Program
}

func compileExpr(src string, lim exprLimits) (*program, error) {
	src = strings.TrimSpace(src)
	if src == "" {
		return nil, errors.New("expression is empty")
	}
	// The parser recurses once per bracket; the length cap keeps a
	// request-sized "((((...))))" from taking the stack with it.
	if len(src) > lim.maxLength {
		return nil, fmt.Errorf("expression is %d bytes long; at most %d are allowed", len(src), lim.maxLength)
	}
	patcher := &guardPatcher{}
	p, err := expr.Compile(src, expr.Env(exprEnv{}), expr.MaxNodes(lim.maxNodes), guardFunctions, expr.Patch(patcher))
	if err != nil {
		return nil, fmt.Errorf("expression %q does not compile: %s", src, firstLine(err.Error()))
	}
	if patcher.reserved {
		return nil, fmt.Errorf("expression %q: %s is a reserved name", src, guardName)
	}
	return &program{src: src, prog: p}, nil
}

// eval runs the program under the run's budget. The VM cannot be
// interrupted, so the deadline and the caller's cancellation stop the
// evaluation's guard instead: every loop step and every guarded call
// checks it, so the evaluation ends promptly and never outlives eval (a
// VM still running would read the run's outputs while the run writes them).
func (p *program) eval(ctx context.Context, env *exprEnv, lim exprLimits) (any, error) {
	budget := env.budget
	if budget == nil {
		budget = newRunBudget(lim)
	}
	left := time.Duration(budget.cpu.Load())
	if left <= 0 {
		return nil, fmt.Errorf("%w: the run's expressions used up their time budget of %s", errResourceExhausted, budget.cpuTotal)
	}
	g := &evalGuard{budget: budget}
	guarded := *env
	guarded.Guard = g
	started := time.Now()
	timer := time.AfterFunc(min(lim.timeout, left), g.stop)
	stopOnCancel := context.AfterFunc(ctx, g.stop)
	machine := vm.VM{MemoryBudget: lim.memoryBudget}
	v, err := machine.Run(p.prog, &guarded)
	timer.Stop()
	stopOnCancel()
	budget.cpu.Add(-int64(time.Since(started)))
	switch {
	case !g.stopped.Load():
		return p.result(v, err, budget)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case left < lim.timeout:
		return nil, fmt.Errorf("expression %q: %w: the run's expressions used up their time budget of %s", p.src, errResourceExhausted, budget.cpuTotal)
	}
	return nil, fmt.Errorf("expression %q: %w", p.src, errExprTimeout)
}

// result checks what an evaluation returned before anything copies or
// serializes it: a list holding one string a million times is cheap to
// make and huge to write out.
func (p *program) result(v any, err error, budget *runBudget) (any, error) {
	if err != nil {
		msg := firstLine(err.Error())
		if strings.Contains(msg, "memory budget exceeded") && !strings.HasPrefix(msg, errResourceExhausted.Error()) {
			msg = errResourceExhausted.Error() + ": " + msg
		}
		return nil, fmt.Errorf("expression %q: %s", p.src, msg)
	}
	if _, err := valueSize(v, budget.maxValue); err != nil {
		return nil, fmt.Errorf("expression %q: %w", p.src, err)
	}
	return normalize(v), nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return strings.TrimSpace(s[:i])
	}
	return s
}

// template is a parameter value whose strings may embed {{ expressions }}.
// A string that is exactly one {{ expression }} takes the expression's
// value with its type; otherwise the parts are joined as text.
type template interface {
	eval(ctx context.Context, env *exprEnv, lim exprLimits) (any, error)
}

type literal struct{ v any }

func (l literal) eval(context.Context, *exprEnv, exprLimits) (any, error) { return l.v, nil }

type textTemplate struct {
	parts []textPart
}

type textPart struct {
	text string
	prog *program // nil for plain text
}

func (t *textTemplate) eval(ctx context.Context, env *exprEnv, lim exprLimits) (any, error) {
	if len(t.parts) == 1 && t.parts[0].prog != nil {
		return t.parts[0].prog.eval(ctx, env, lim)
	}
	var b strings.Builder
	for _, part := range t.parts {
		if part.prog == nil {
			b.WriteString(part.text)
			continue
		}
		v, err := part.prog.eval(ctx, env, lim)
		if err != nil {
			return nil, err
		}
		if _, err := valueSize(v, lim.maxValue-int64(b.Len())); err != nil {
			return nil, fmt.Errorf("expanding {{ %s }}: %w", part.prog.src, err)
		}
		b.WriteString(textOf(v))
	}
	return b.String(), nil
}

type mapTemplate map[string]template

func (m mapTemplate) eval(ctx context.Context, env *exprEnv, lim exprLimits) (any, error) {
	out := make(map[string]any, len(m))
	for k, t := range m {
		v, err := t.eval(ctx, env, lim)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return bounded(out, lim)
}

type listTemplate []template

func (l listTemplate) eval(ctx context.Context, env *exprEnv, lim exprLimits) (any, error) {
	out := make([]any, len(l))
	for i, t := range l {
		v, err := t.eval(ctx, env, lim)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return bounded(out, lim)
}

// bounded checks an object or list a template built: each of its values
// fits, but many of them together need not (a thousand headers, each a
// list holding one big string a hundred times, are written out in full).
func bounded(v any, lim exprLimits) (any, error) {
	if _, err := valueSize(v, lim.maxValue); err != nil {
		return nil, err
	}
	return v, nil
}

// compileTemplate compiles every {{ expression }} inside v. The error is a
// field error whose path points into v.
func compileTemplate(v any, field string, lim exprLimits) (template, *fieldError) {
	switch v := v.(type) {
	case string:
		return compileText(v, field, lim)
	case map[string]any:
		m := make(mapTemplate, len(v))
		for k, item := range v {
			t, fe := compileTemplate(item, field+"."+k, lim)
			if fe != nil {
				return nil, fe
			}
			m[k] = t
		}
		return m, nil
	case []any:
		l := make(listTemplate, len(v))
		for i, item := range v {
			t, fe := compileTemplate(item, fmt.Sprintf("%s[%d]", field, i), lim)
			if fe != nil {
				return nil, fe
			}
			l[i] = t
		}
		return l, nil
	default:
		return literal{v}, nil
	}
}

func compileText(s, field string, lim exprLimits) (template, *fieldError) {
	if !strings.Contains(s, "{{") {
		return literal{s}, nil
	}
	var parts []textPart
	rest := s
	for {
		start := strings.Index(rest, "{{")
		if start < 0 {
			if rest != "" {
				parts = append(parts, textPart{text: rest})
			}
			break
		}
		end := strings.Index(rest[start:], "}}")
		if end < 0 {
			return nil, fieldErrorf(field, "unclosed {{ in %q", s)
		}
		if start > 0 {
			parts = append(parts, textPart{text: rest[:start]})
		}
		prog, err := compileExpr(rest[start+2:start+end], lim)
		if err != nil {
			return nil, fieldErrorf(field, "%s", err.Error())
		}
		parts = append(parts, textPart{prog: prog})
		rest = rest[start+end+2:]
	}
	return &textTemplate{parts: parts}, nil
}
