package engine

import (
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/conf"
)

// errResourceExhausted marks every failure of a run that hit one of its
// limits, so that the run's error says so in the same words each time.
var errResourceExhausted = errors.New("resource exhausted")

// runBudget is what one run may spend. The expression VM's own memory
// budget counts elements and only after a builtin has allocated; this one
// counts bytes and is charged before anything is built, by every function
// that builds a value, by string concatenation and by node outputs.
type runBudget struct {
	memory   atomic.Int64 // bytes left
	cpu      atomic.Int64 // nanoseconds of expression evaluation left
	maxValue int64        // bytes any one value may take
	memTotal int64
	cpuTotal time.Duration
}

func newRunBudget(lim exprLimits) *runBudget {
	b := &runBudget{maxValue: lim.maxValue, memTotal: lim.runMemory, cpuTotal: lim.runCPU}
	b.memory.Store(lim.runMemory)
	b.cpu.Store(int64(lim.runCPU))
	return b
}

// charge takes n bytes from the budget, or refuses them.
func (b *runBudget) charge(n int64) error {
	if n > b.maxValue {
		return fmt.Errorf("%w: a value would be larger than %d bytes", errResourceExhausted, b.maxValue)
	}
	if b.memory.Add(-n) < 0 {
		return fmt.Errorf("%w: the run used more than its memory budget of %d bytes", errResourceExhausted, b.memTotal)
	}
	return nil
}

// evalGuard is one evaluation's handle on its run's budget. Expressions
// reach it through a hidden argument the compiler adds to every guarded
// call; stop ends a runaway evaluation at its next call or loop step, as
// the VM itself cannot be interrupted.
type evalGuard struct {
	budget  *runBudget
	stopped atomic.Bool
}

var errStopped = fmt.Errorf("%w: the expression ran out of time", errResourceExhausted)

func (g *evalGuard) charge(n int64) error {
	if g.stopped.Load() {
		return errStopped
	}
	return g.budget.charge(n)
}

func (g *evalGuard) stop() { g.stopped.Store(true) }

// guardName is the environment field that carries the guard. A workflow
// that names it itself is refused, so only the compiler's calls pass it.
const guardName = "__guard"

// guardPatcher rewrites an expression so that all allocation and looping
// goes through the guard: guarded builtins get the guard as their first
// argument, "+" becomes a size-checked call, method calls have their result
// charged, and every predicate body (map, filter, reduce, ...) ticks.
type guardPatcher struct {
	reserved bool // the expression names guardName itself
}

func (p *guardPatcher) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.IdentifierNode:
		if n.Value == guardName {
			p.reserved = true
		}
	case *ast.CallNode:
		p.visitCall(node, n)
	case *ast.BinaryNode:
		if n.Operator == "+" && !numeric(n.Left) && !numeric(n.Right) {
			ast.Patch(node, guardedCall("__add", n.Left, n.Right))
		}
	case *ast.PredicateNode:
		n.Node = guardedCall("__tick", n.Node)
	}
}

func (p *guardPatcher) visitCall(node *ast.Node, n *ast.CallNode) {
	if id, ok := n.Callee.(*ast.IdentifierNode); ok {
		if _, guarded := guardedFunctions[id.Value]; guarded {
			n.Arguments = append([]ast.Node{&ast.IdentifierNode{Value: guardName}}, n.Arguments...)
		}
		return
	}
	// A method of a value (time.Time's Format, say) may build a string as
	// long as its argument; its result is measured and charged.
	ast.Patch(node, guardedCall("__charge", n))
}

func guardedCall(name string, args ...ast.Node) *ast.CallNode {
	return &ast.CallNode{
		Callee:    &ast.IdentifierNode{Value: name},
		Arguments: append([]ast.Node{&ast.IdentifierNode{Value: guardName}}, args...),
	}
}

// numeric reports whether the checker proved a node to be a number, so an
// addition of two of them stays a plain, foldable "+".
func numeric(n ast.Node) bool {
	t := n.Type()
	if t == nil {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// guardFunctions installs the guarded functions; they replace the builtins
// of the same names.
func guardFunctions(c *conf.Config) {
	for name, f := range guardedFunctions {
		c.Functions[name] = f
	}
}

// guardedFunctions is filled once by init in guardfuncs.go.
var guardedFunctions map[string]*builtin.Function
