package sse

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxParamLen bounds each query value; the RPC layer enforces its own,
// tighter, limits per field.
const maxParamLen = 64 << 10

// fieldError names the query parameter (a proto field name) that is wrong.
type fieldError struct {
	field  string
	reason string
}

// buildRequest fills a new request message from the query string. Field
// names are the proto names; repeated fields take repeated parameters.
// Message-typed fields cannot be expressed in a query and are rejected.
func (b *Bridge) buildRequest(query url.Values, lastEventID string) (protoreflect.Message, *fieldError) {
	msg := b.reqType.New()
	fields := msg.Descriptor().Fields()
	for name, values := range query {
		if _, skip := b.ignored[name]; skip {
			continue
		}
		fd := fields.ByName(protoreflect.Name(name))
		if fd == nil || fd.IsMap() || fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
			return nil, &fieldError{field: name, reason: "unknown query parameter"}
		}
		if !fd.IsList() && len(values) > 1 {
			return nil, &fieldError{field: name, reason: "given more than once"}
		}
		for _, raw := range values {
			if len(raw) > maxParamLen {
				return nil, &fieldError{field: name, reason: fmt.Sprintf("longer than %d bytes", maxParamLen)}
			}
			v, err := parseScalar(fd, raw)
			if err != nil {
				return nil, &fieldError{field: name, reason: err.Error()}
			}
			if fd.IsList() {
				msg.Mutable(fd).List().Append(v)
			} else {
				msg.Set(fd, v)
			}
		}
	}
	if b.resume != nil && lastEventID != "" {
		// The header is what a reconnecting EventSource sends, so it wins
		// over a stale query parameter from the original URL.
		v, err := parseScalar(b.resume, lastEventID)
		if err != nil {
			return nil, &fieldError{field: string(b.resume.Name()), reason: "Last-Event-ID: " + err.Error()}
		}
		msg.Set(b.resume, v)
	}
	return msg, nil
}

func parseScalar(fd protoreflect.FieldDescriptor, raw string) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(raw), nil
	case protoreflect.BytesKind:
		data, err := base64.URLEncoding.DecodeString(raw)
		if err != nil {
			if data, err = base64.StdEncoding.DecodeString(raw); err != nil {
				return protoreflect.Value{}, fmt.Errorf("must be base64")
			}
		}
		return protoreflect.ValueOfBytes(data), nil
	case protoreflect.BoolKind:
		v, err := strconv.ParseBool(raw)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be true or false")
		}
		return protoreflect.ValueOfBool(v), nil
	case protoreflect.EnumKind:
		return parseEnum(fd, raw)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		v, err := strconv.ParseFloat(raw, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be a number")
		}
		if fd.Kind() == protoreflect.FloatKind {
			return protoreflect.ValueOfFloat32(float32(v)), nil
		}
		return protoreflect.ValueOfFloat64(v), nil
	default:
		return parseInteger(fd, raw)
	}
}

func parseInteger(fd protoreflect.FieldDescriptor, raw string) (protoreflect.Value, error) {
	switch fd.Kind() {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		v, err := strconv.ParseInt(raw, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be a 32-bit integer")
		}
		return protoreflect.ValueOfInt32(int32(v)), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		v, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be a 64-bit integer")
		}
		return protoreflect.ValueOfInt64(v), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		v, err := strconv.ParseUint(raw, 10, 32)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be an unsigned 32-bit integer")
		}
		return protoreflect.ValueOfUint32(uint32(v)), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		v, err := strconv.ParseUint(raw, 10, 64)
		if err != nil {
			return protoreflect.Value{}, fmt.Errorf("must be an unsigned 64-bit integer")
		}
		return protoreflect.ValueOfUint64(v), nil
	}
	return protoreflect.Value{}, fmt.Errorf("cannot be given as a query parameter")
}

func parseEnum(fd protoreflect.FieldDescriptor, raw string) (protoreflect.Value, error) {
	values := fd.Enum().Values()
	if ev := values.ByName(protoreflect.Name(raw)); ev != nil {
		return protoreflect.ValueOfEnum(ev.Number()), nil
	}
	n, err := strconv.ParseInt(raw, 10, 32)
	if err == nil {
		if ev := values.ByNumber(protoreflect.EnumNumber(n)); ev != nil {
			return protoreflect.ValueOfEnum(ev.Number()), nil
		}
	}
	return protoreflect.Value{}, fmt.Errorf("not a value of %s", fd.Enum().FullName())
}
