package engine

import (
	"fmt"
	"reflect"
	"time"
)

// maxValueDepth bounds how deeply a value may nest. Deeper values are
// refused before anything walks them recursively (normalize, JSON, proto).
const maxValueDepth = 512

// sizer measures what a value would take written out as JSON, stopping as
// soon as it passes limit. Shared references count every time they appear:
// a list holding one big string a million times is a million big strings
// to whoever serializes it, and that is what makes it dangerous.
type sizer struct {
	limit int64
	total int64
	nodes int64 // containers and scalars seen, for indentation estimates
	depth int   // deepest nesting seen
}

// valueSize returns the JSON size of v, or an error once it passes limit
// or nests deeper than maxValueDepth.
func valueSize(v any, limit int64) (int64, error) {
	s := &sizer{limit: limit}
	if err := s.walk(v, 0); err != nil {
		return 0, err
	}
	return s.total, nil
}

func (s *sizer) add(n int64) error {
	s.total += n
	s.nodes++
	if s.total > s.limit {
		return fmt.Errorf("%w: a value would be larger than %d bytes", errResourceExhausted, s.limit)
	}
	return nil
}

func (s *sizer) walk(v any, depth int) error {
	if depth > maxValueDepth {
		return fmt.Errorf("%w: a value nests more than %d levels deep", errResourceExhausted, maxValueDepth)
	}
	s.depth = max(s.depth, depth)
	switch v := v.(type) {
	case nil, bool:
		return s.add(5)
	case string:
		return s.add(int64(len(v)) + 2)
	case []byte:
		return s.add(int64(len(v))*4/3 + 4)
	case float64, int, int64, float32, int32, uint, uint64:
		return s.add(24)
	case time.Time, time.Duration:
		return s.add(40)
	case []any:
		return s.walkList(v, depth)
	case map[string]any:
		return s.walkMap(v, depth)
	}
	return s.walkReflect(reflect.ValueOf(v), depth)
}

func (s *sizer) walkList(v []any, depth int) error {
	if err := s.add(int64(len(v)) + 2); err != nil {
		return err
	}
	for _, item := range v {
		if err := s.walk(item, depth+1); err != nil {
			return err
		}
	}
	return nil
}

func (s *sizer) walkMap(v map[string]any, depth int) error {
	if err := s.add(int64(len(v))*4 + 2); err != nil {
		return err
	}
	for k, item := range v {
		if err := s.add(int64(len(k))); err != nil {
			return err
		}
		if err := s.walk(item, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// walkReflect covers the typed slices and maps builtins return ([]string,
// []int, map[any][]any of groupBy) and whatever else reaches an output.
func (s *sizer) walkReflect(rv reflect.Value, depth int) error {
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		if err := s.add(int64(rv.Len()) + 2); err != nil {
			return err
		}
		for i := range rv.Len() {
			if err := s.walk(rv.Index(i).Interface(), depth+1); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		return s.walkReflectMap(rv, depth)
	case reflect.Pointer, reflect.Interface:
		if rv.IsNil() {
			return s.add(5)
		}
		return s.walk(rv.Elem().Interface(), depth+1)
	case reflect.Struct:
		for i := range rv.NumField() {
			if rv.Type().Field(i).IsExported() {
				if err := s.walk(rv.Field(i).Interface(), depth+1); err != nil {
					return err
				}
			}
		}
		return s.add(2)
	case reflect.String:
		return s.add(int64(rv.Len()) + 2)
	}
	return s.add(24)
}

func (s *sizer) walkReflectMap(rv reflect.Value, depth int) error {
	if err := s.add(int64(rv.Len())*4 + 2); err != nil {
		return err
	}
	iter := rv.MapRange()
	for iter.Next() {
		if err := s.walk(iter.Key().Interface(), depth+1); err != nil {
			return err
		}
		if err := s.walk(iter.Value().Interface(), depth+1); err != nil {
			return err
		}
	}
	return nil
}

// indentedSize bounds what json.MarshalIndent with two-space indentation
// writes: every element on its own line, indented by its depth.
func indentedSize(v any, limit int64) (int64, error) {
	s := &sizer{limit: limit}
	if err := s.walk(v, 0); err != nil {
		return 0, err
	}
	n := s.total + s.nodes*int64(2*s.depth+2)
	if n > limit {
		return 0, fmt.Errorf("%w: a value would be larger than %d bytes", errResourceExhausted, limit)
	}
	return n, nil
}
