package server

import (
	"bytes"
	"cmp"
	"slices"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The direct REST path's JSON for the commonest shapes: a request body of
// plain string members, a response of strings and timestamps. Each does
// what protojson and proto.Marshal or proto.Unmarshal do for those shapes,
// byte for byte, without their reflection, and leaves everything else to
// them.

// plainJSONMessage returns the protobuf encoding of the message of type
// md that body decodes to, when body is a JSON object whose members are
// all plain strings (printable ASCII without escapes) naming distinct
// singular string fields without presence, and reports whether it did.
// Create calls mostly send such bodies, and protojson's general decoder
// and a reflective message cost them more than the rest of their
// decoding. What it takes, protojson decodes to a message proto.Marshal
// encodes to the same bytes (fields in number order, empty strings left
// out), with field names looked up as protojson does (JSON name, then
// proto name); anything else, every input protojson refuses included, it
// leaves to protojson.
func plainJSONMessage(body []byte, fields map[string]protoreflect.FieldDescriptor) ([]byte, bool) {
	if fields == nil {
		return nil, false
	}
	var members [8]plainMember
	set, ok := plainJSONMembers(body, fields, members[:0])
	if !ok {
		return nil, false
	}
	slices.SortFunc(set, func(a, b plainMember) int { return cmp.Compare(a.num, b.num) })
	size := 0
	for _, m := range set {
		if len(m.value) > 0 {
			size += protowire.SizeTag(m.num) + protowire.SizeBytes(len(m.value))
		}
	}
	msg := make([]byte, 0, size)
	for _, m := range set {
		if len(m.value) > 0 {
			msg = protowire.AppendTag(msg, m.num, protowire.BytesType)
			msg = protowire.AppendBytes(msg, m.value)
		}
	}
	return msg, true
}

// plainFields maps every name protojson takes for a field of md (its JSON
// name, else its proto name) to that field, for plainJSONMessage; it is
// nil for messages protojson checks or shapes otherwise.
func plainFields(md protoreflect.MessageDescriptor) map[string]protoreflect.FieldDescriptor {
	if md.RequiredNumbers().Len() > 0 || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return nil
	}
	fields := md.Fields()
	byName := map[string]protoreflect.FieldDescriptor{}
	for i := range fields.Len() {
		for _, name := range []string{fields.Get(i).JSONName(), fields.Get(i).TextName()} {
			fd := fields.ByJSONName(name)
			if fd == nil {
				fd = fields.ByTextName(name)
			}
			byName[name] = fd
		}
	}
	return byName
}

// plainMember is a string field's number and value.
type plainMember struct {
	num   protowire.Number
	value []byte
}

// plainJSONMembers appends to set the members of the plain JSON object
// body, by field, and reports whether body is one (see plainJSONMessage).
func plainJSONMembers(body []byte, fields map[string]protoreflect.FieldDescriptor, set []plainMember) ([]plainMember, bool) {
	var seen uint64 // the field numbers set, all below 64
	i := skipJSONSpace(body, 0)
	if i == len(body) || body[i] != '{' {
		return nil, false
	}
	i = skipJSONSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return set, skipJSONSpace(body, i+1) == len(body)
	}
	for {
		name, next, ok := plainJSONString(body, i)
		if !ok {
			return nil, false
		}
		if i = skipJSONSpace(body, next); i == len(body) || body[i] != ':' {
			return nil, false
		}
		value, next, ok := plainJSONString(body, skipJSONSpace(body, i+1))
		if !ok {
			return nil, false
		}
		fd := fields[string(name)]
		if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated ||
			fd.HasPresence() || fd.ContainingOneof() != nil || fd.Number() >= 64 || seen&(1<<fd.Number()) != 0 {
			return nil, false
		}
		seen |= 1 << fd.Number()
		set = append(set, plainMember{num: fd.Number(), value: value})
		if i = skipJSONSpace(body, next); i == len(body) {
			return nil, false
		}
		switch body[i] {
		case ',':
			i = skipJSONSpace(body, i+1)
		case '}':
			return set, skipJSONSpace(body, i+1) == len(body)
		default:
			return nil, false
		}
	}
}

// skipJSONSpace returns the index of the first byte at or after i that is
// not JSON whitespace.
func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainJSONString reads the JSON string at b[i] when it holds printable
// ASCII only, no escapes, and returns its contents and the index after it.
func plainJSONString(b []byte, i int) ([]byte, int, bool) {
	if i == len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// plainOutput is how a response message of strings and timestamps is
// written as protojson writes it with the direct path's options (proto
// names, unpopulated fields emitted): its fields in declaration order.
type plainOutput struct {
	fields []plainOutField
	index  map[protowire.Number]int
	// comma is what protojson writes between members: a comma, and in
	// some builds a space after it (protojson varies its output per binary
	// so that nobody depends on it; see plainComma).
	comma string
}

type plainOutField struct {
	num       protowire.Number
	key       string // `"name":`
	timestamp bool   // a google.protobuf.Timestamp, else a string
}

// maxPlainFields bounds the fields of a plain response, which are kept in
// an array on the stack while one is read.
const maxPlainFields = 16

// newPlainOutput returns md's plainOutput, or nil when md has a field
// other than a singular string without presence or a Timestamp, or is
// one protojson shapes otherwise.
func newPlainOutput(md protoreflect.MessageDescriptor) *plainOutput {
	fields := md.Fields()
	if fields.Len() > maxPlainFields || md.RequiredNumbers().Len() > 0 ||
		strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return nil
	}
	out := &plainOutput{index: map[protowire.Number]int{}, comma: plainComma()}
	for i := range fields.Len() {
		fd := fields.Get(i)
		f := plainOutField{num: fd.Number(), key: `"` + fd.TextName() + `":`}
		switch {
		case fd.Cardinality() == protoreflect.Repeated || fd.ContainingOneof() != nil || !plainASCII(fd.TextName()):
			return nil
		case fd.Kind() == protoreflect.StringKind && !fd.HasPresence():
		case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Timestamp":
			f.timestamp = true
		default:
			return nil
		}
		out.index[f.num] = len(out.fields)
		out.fields = append(out.fields, f)
	}
	return out
}

// plainComma is what protojson writes between two members in this binary.
func plainComma() string {
	probe := &errdetails.BadRequest_FieldViolation{Field: "a", Description: "b"}
	if b, err := protojson.Marshal(probe); err == nil && strings.Contains(string(b), ", ") {
		return ", "
	}
	return ","
}

// appendJSON appends the JSON of the message whose protobuf encoding is
// wire, and reports whether it could: a field repeated, unknown or of an
// unexpected wire type, a string that is not plain ASCII or a timestamp
// out of protojson's range is left to protojson.
func (p *plainOutput) appendJSON(dst, wire []byte) ([]byte, bool) {
	var values [maxPlainFields][]byte
	var seen uint32
	for len(wire) > 0 {
		num, typ, n := protowire.ConsumeTag(wire)
		if n < 0 || typ != protowire.BytesType {
			return dst, false
		}
		i, ok := p.index[num]
		if !ok || seen&(1<<i) != 0 {
			return dst, false
		}
		v, m := protowire.ConsumeBytes(wire[n:])
		if m < 0 {
			return dst, false
		}
		seen |= 1 << i
		values[i] = v
		wire = wire[n+m:]
	}
	dst = append(dst, '{')
	for i, f := range p.fields {
		if i > 0 {
			dst = append(dst, p.comma...)
		}
		dst = append(dst, f.key...)
		var ok bool
		switch {
		case f.timestamp && seen&(1<<i) == 0:
			dst, ok = append(dst, "null"...), true
		case f.timestamp:
			dst, ok = appendTimestamp(dst, values[i])
		case plainASCII(string(values[i])):
			dst, ok = append(append(append(dst, '"'), values[i]...), '"'), true
		}
		if !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// appendTimestamp appends a Timestamp's protobuf encoding as protojson
// writes it: RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
func appendTimestamp(dst, wire []byte) ([]byte, bool) {
	var secs, nanos int64
	var seen [3]bool
	for len(wire) > 0 {
		num, typ, n := protowire.ConsumeTag(wire)
		if n < 0 || typ != protowire.VarintType || (num != 1 && num != 2) || seen[num] {
			return dst, false
		}
		v, m := protowire.ConsumeVarint(wire[n:])
		if m < 0 {
			return dst, false
		}
		seen[num] = true
		if num == 1 {
			secs = int64(v) //nolint:gosec // an int64 field's encoding
		} else {
			nanos = int64(int32(v)) //nolint:gosec // an int32 field's encoding
		}
		wire = wire[n+m:]
	}
	const minSeconds, maxSeconds, maxNanos = -62135596800, 253402300799, 999999999
	if secs < minSeconds || secs > maxSeconds || nanos < 0 || nanos > maxNanos {
		return dst, false
	}
	var buf [40]byte
	x := time.Unix(secs, nanos).UTC().AppendFormat(buf[:0], "2006-01-02T15:04:05.000000000")
	x = bytes.TrimSuffix(x, []byte("000"))
	x = bytes.TrimSuffix(x, []byte("000"))
	x = bytes.TrimSuffix(x, []byte(".000"))
	return append(append(append(dst, '"'), x...), `Z"`...), true
}

// plainASCII reports whether s is printable ASCII without a quote or a
// backslash: a JSON string's contents as they are.
func plainASCII(s string) bool {
	for i := range len(s) {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}
