package engine

import (
	"fmt"
	"reflect"

	"github.com/expr-lang/expr/ast"
)

// arithmetic are the operators whose result is a number (or, for "+", a
// joined string or list) and never true or false.
var arithmetic = map[string]bool{"+": true, "-": true, "*": true, "/": true, "%": true, "**": true, "^": true, "..": true}

// neverBoolean says what a condition's expression yields when that can
// never be true or false, "" when it can. The checker types most of an
// expression; where it cannot (trigger data is untyped), the shape of the
// expression still tells: "trigger.total * 2" is a number, whatever
// trigger.total holds.
func neverBoolean(p *program) string {
	root := p.prog.Node()
	for {
		seq, ok := root.(*ast.SequenceNode)
		if !ok || len(seq.Nodes) == 0 {
			break
		}
		root = seq.Nodes[len(seq.Nodes)-1]
	}
	switch n := root.(type) {
	case *ast.NilNode:
		return "null"
	case *ast.BinaryNode:
		if arithmetic[n.Operator] {
			return fmt.Sprintf("the result of %q", n.Operator)
		}
	case *ast.UnaryNode:
		if n.Operator == "-" || n.Operator == "+" {
			return "a number"
		}
	case *ast.CallNode:
		if id, ok := n.Callee.(*ast.IdentifierNode); ok && id.Value == "__add" {
			return `the result of "+"`
		}
	}
	t := root.Type()
	if t == nil {
		return ""
	}
	switch t.Kind() {
	case reflect.Bool, reflect.Interface:
		return ""
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8,
		reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map:
		return "an object"
	}
	return "a " + t.String()
}
