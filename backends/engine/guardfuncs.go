package engine

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/expr-lang/expr/builtin"
	"github.com/expr-lang/expr/vm/runtime"
)

// estimator says, before a builtin runs, how many bytes its result may
// take, from its arguments (without the guard).
type estimator func(g *evalGuard, args []any) (int64, error)

// guardedBuiltins are the builtins that build values, with what each may
// build. Those whose result can outgrow their arguments many times over
// (repeat, join, replace, toJSON, string, flatten, split) are measured
// exactly; the rest are linear in their arguments and charged by size.
var guardedBuiltins = map[string]estimator{
	"repeat":     estimateRepeat,
	"join":       estimateJoin,
	"replace":    estimateReplace,
	"split":      estimateSplit,
	"splitAfter": estimateSplit,
	"toJSON":     func(g *evalGuard, args []any) (int64, error) { return indentedSize(arg(args, 0), g.budget.maxValue) },
	"string":     func(g *evalGuard, args []any) (int64, error) { return valueSize(arg(args, 0), g.budget.maxValue) },
	"flatten":    estimateFlatten,
	"fromJSON":   linear(4), // a parsed "[0,0,…]" takes many times its text
	"upper":      linear(2),
	"lower":      linear(2),
	"toBase64":   linear(2),
	"fromBase64": linear(1),
	"keys":       linear(16),
	"values":     linear(16),
	"toPairs":    linear(48),
	"fromPairs":  linear(32),
	"reverse":    linear(16),
	"uniq":       linear(16),
	"sort":       linear(16),
	"take":       linear(16),
	"concat":     linear(16),
	"median":     linear(8),
}

func init() {
	guardedFunctions = make(map[string]*builtin.Function, len(guardedBuiltins)+3)
	for name, est := range guardedBuiltins {
		guardedFunctions[name] = wrapBuiltin(name, est)
	}
	guardedFunctions["__add"] = &builtin.Function{Name: "__add", Func: guardedAdd}
	guardedFunctions["__tick"] = &builtin.Function{Name: "__tick", Func: tick}
	guardedFunctions["__charge"] = &builtin.Function{Name: "__charge", Func: chargeResult}
}

// wrapBuiltin keeps the builtin's behaviour and signatures and puts the
// guard's charge in front of it.
func wrapBuiltin(name string, est estimator) *builtin.Function {
	orig := builtin.Builtins[builtin.Index[name]]
	call := callOf(orig)
	f := &builtin.Function{
		Name: name,
		Func: func(params ...any) (any, error) {
			g := params[0].(*evalGuard)
			n, err := est(g, params[1:])
			if err != nil {
				return nil, err
			}
			if err := g.charge(n); err != nil {
				return nil, err
			}
			return call(params[1:]...)
		},
	}
	guardType := reflect.TypeFor[*evalGuard]()
	for _, t := range orig.Types {
		in := []reflect.Type{guardType}
		for i := range t.NumIn() {
			in = append(in, t.In(i))
		}
		out := make([]reflect.Type, t.NumOut())
		for i := range out {
			out[i] = t.Out(i)
		}
		f.Types = append(f.Types, reflect.FuncOf(in, out, t.IsVariadic()))
	}
	if orig.Validate != nil {
		f.Validate = func(args []reflect.Type) (reflect.Type, error) {
			if len(args) == 0 {
				return nil, fmt.Errorf("%s: missing arguments", name)
			}
			return orig.Validate(args[1:])
		}
	}
	return f
}

func callOf(f *builtin.Function) func(args ...any) (any, error) {
	switch {
	case f.Fast != nil:
		return func(args ...any) (any, error) {
			if len(args) != 1 {
				return nil, fmt.Errorf("%s takes exactly one argument", f.Name)
			}
			return f.Fast(args[0]), nil
		}
	case f.Safe != nil:
		return func(args ...any) (any, error) {
			v, _, err := f.Safe(args...)
			return v, err
		}
	}
	return f.Func
}

func arg(args []any, i int) any {
	if i < len(args) {
		return args[i]
	}
	return nil
}

func str(args []any, i int) string {
	s, _ := arg(args, i).(string)
	return s
}

// linear charges per byte of string arguments and per element of list
// and map arguments.
func linear(perUnit int64) estimator {
	return func(_ *evalGuard, args []any) (int64, error) {
		var n int64
		for _, a := range args {
			switch v := a.(type) {
			case string:
				n += int64(len(v))
			case nil, bool, int, float64:
			default:
				if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice || rv.Kind() == reflect.Map || rv.Kind() == reflect.Array {
					n += int64(rv.Len())
				}
			}
		}
		return n * perUnit, nil
	}
}

func estimateRepeat(_ *evalGuard, args []any) (int64, error) {
	s, n := int64(len(str(args, 0))), int64(runtime.ToInt(arg(args, 1)))
	if n < 0 {
		return 0, fmt.Errorf("invalid argument for repeat (expected positive integer, got %d)", n)
	}
	if s > 0 && n > math.MaxInt64/s {
		return math.MaxInt64, nil
	}
	return s * n, nil
}

func estimateJoin(_ *evalGuard, args []any) (int64, error) {
	glue := int64(len(str(args, 1)))
	var n int64
	add := func(s string) { n += int64(len(s)) + glue }
	switch list := arg(args, 0).(type) {
	case []string:
		for _, s := range list {
			add(s)
		}
	case []any:
		for _, item := range list {
			s, _ := item.(string)
			add(s)
		}
	}
	return n, nil
}

func estimateReplace(_ *evalGuard, args []any) (int64, error) {
	s, old, repl := str(args, 0), str(args, 1), str(args, 2)
	count := int64(strings.Count(s, old))
	if old == "" {
		count = int64(utf8.RuneCountInString(s)) + 1
	}
	if len(args) == 4 {
		if limit := int64(runtime.ToInt(args[3])); limit >= 0 {
			count = min(count, limit)
		}
	}
	return int64(len(s)) + count*max(0, int64(len(repl)-len(old))), nil
}

// estimateSplit charges a string header per piece: splitting a megabyte
// at every character makes a million of them.
func estimateSplit(_ *evalGuard, args []any) (int64, error) {
	s, sep := str(args, 0), str(args, 1)
	pieces := int64(strings.Count(s, sep)) + 1
	if sep == "" {
		pieces = int64(utf8.RuneCountInString(s))
	}
	return pieces * 16, nil
}

// estimateFlatten counts the elements flatten would produce; nested lists
// that share one list many times multiply.
func estimateFlatten(g *evalGuard, args []any) (int64, error) {
	limit := g.budget.maxValue / 16
	var count func(v any, depth int) (int64, error)
	count = func(v any, depth int) (int64, error) {
		rv := reflect.ValueOf(v)
		if !rv.IsValid() || rv.Kind() != reflect.Slice && rv.Kind() != reflect.Array {
			return 1, nil
		}
		if depth > maxValueDepth {
			return 0, fmt.Errorf("%w: a value nests more than %d levels deep", errResourceExhausted, maxValueDepth)
		}
		var n int64
		for i := range rv.Len() {
			c, err := count(rv.Index(i).Interface(), depth+1)
			if err != nil {
				return 0, err
			}
			if n += c; n > limit {
				return n, nil // enough to be refused
			}
		}
		return n, nil
	}
	n, err := count(arg(args, 0), 0)
	return n * 16, err
}

// guardedAdd is "+" for operands not known to be numbers: a string
// concatenation is charged before it is built (reduce(1..60, #acc + #acc,
// "x") doubles a string sixty times).
func guardedAdd(params ...any) (any, error) {
	g := params[0].(*evalGuard)
	a, aStr := params[1].(string)
	b, bStr := params[2].(string)
	if aStr && bStr {
		if err := g.charge(int64(len(a) + len(b))); err != nil {
			return nil, err
		}
		return a + b, nil
	}
	if g.stopped.Load() {
		return nil, errStopped
	}
	return runtime.Add(params[1], params[2]), nil
}

// tick runs once per step of every loop; it is how a stopped evaluation
// notices.
func tick(params ...any) (any, error) {
	if params[0].(*evalGuard).stopped.Load() {
		return nil, errStopped
	}
	return params[1], nil
}

func chargeResult(params ...any) (any, error) {
	g := params[0].(*evalGuard)
	n, err := valueSize(params[1], g.budget.maxValue)
	if err != nil {
		return nil, err
	}
	if err := g.charge(n); err != nil {
		return nil, err
	}
	return params[1], nil
}
