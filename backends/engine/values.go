package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
)

// normalize turns any value an expression or node produces into the JSON
// data model (nil, bool, float64, string, []any, map[string]any) so that
// outputs convert to google.protobuf.Value and compare predictably.
func normalize(v any) any {
	switch v := v.(type) {
	case nil, bool, string, float64:
		return v
	case int:
		return float64(v)
	case int64:
		return float64(v)
	case int32:
		return float64(v)
	case uint:
		return float64(v)
	case uint64:
		return float64(v)
	case float32:
		return float64(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	case time.Duration:
		return v.String()
	case []byte:
		return string(v)
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, item := range v {
			out[k] = normalize(item)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			out[i] = normalize(item)
		}
		return out
	}
	return normalizeReflect(v)
}

func normalizeReflect(v any) any {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		out := make([]any, rv.Len())
		for i := range out {
			out[i] = normalize(rv.Index(i).Interface())
		}
		return out
	case reflect.Map:
		out := make(map[string]any, rv.Len())
		iter := rv.MapRange()
		for iter.Next() {
			out[fmt.Sprint(iter.Key().Interface())] = normalize(iter.Value().Interface())
		}
		return out
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return float64(rv.Int())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return float64(rv.Uint())
	case reflect.Float32, reflect.Float64:
		return rv.Float()
	case reflect.String:
		return rv.String()
	case reflect.Bool:
		return rv.Bool()
	}
	// Whatever else (structs, pointers) is shown through its JSON form.
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		return string(raw)
	}
	return out
}

// toValue converts a normalized value to a google.protobuf.Value. NaN and
// infinities, which JSON cannot carry, become strings.
func toValue(v any) *structpb.Value {
	v = sanitizeFloats(normalize(v))
	pv, err := structpb.NewValue(v)
	if err != nil {
		return structpb.NewStringValue(fmt.Sprint(v))
	}
	return pv
}

func sanitizeFloats(v any) any {
	switch v := v.(type) {
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return strconv.FormatFloat(v, 'g', -1, 64)
		}
	case map[string]any:
		for k, item := range v {
			v[k] = sanitizeFloats(item)
		}
	case []any:
		for i, item := range v {
			v[i] = sanitizeFloats(item)
		}
	}
	return v
}

// textOf renders a value inside a text template: strings as they are,
// everything else as JSON.
func textOf(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(v)
	}
	raw, err := json.Marshal(sanitizeFloats(v))
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(raw)
}

// truthy is how a condition reads a non-boolean result.
func truthy(v any) (bool, error) {
	switch v := v.(type) {
	case bool:
		return v, nil
	case nil:
		return false, nil
	default:
		return false, fmt.Errorf("condition must evaluate to true or false, got %s", kindOf(v))
	}
}

func kindOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64:
		return "a number"
	case string:
		return "a string"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// durationParam reads a duration given as a Go duration string ("1.5s",
// "2m") or a number of seconds.
func durationParam(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration like \"500ms\" or \"2s\"", v)
		}
		return d, nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) || v > float64(math.MaxInt64)/float64(time.Second) || v < 0 {
			return 0, fmt.Errorf("%v is not a valid number of seconds", v)
		}
		return time.Duration(v * float64(time.Second)), nil
	default:
		return 0, fmt.Errorf("must be a duration string or a number of seconds, got %s", kindOf(v))
	}
}

// intParam reads a whole number.
func intParam(v any) (int64, error) {
	f, ok := v.(float64)
	if !ok {
		return 0, fmt.Errorf("must be a number, got %s", kindOf(v))
	}
	if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("must be a whole number, got %v", f)
	}
	return int64(f), nil
}
