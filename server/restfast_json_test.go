package server

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
)

// plainJSONSeeds are bodies around the edges of what decodePlainJSON
// takes: plain string members, and everything next to them it must leave
// to protojson.
var plainJSONSeeds = []string{
	`{"action":"create"}`,
	` { "action" : "create" , "workflow_id" : "wf-1" } `,
	"{\t\"workflowId\":\"wf-1\"\r\n}",
	`{}`, ` {} `, `{"action":""}`,
	`{"action":"create","action":"edit"}`,
	`{"workflowId":"a","workflow_id":"b"}`,
	`{"action":"create",}`, `{"action":"create"`, `{"action":"create"}}`, `{"action":"create"} x`,
	`{"action":"cr\"eate"}`, `{"action":"cr\u0065ate"}`, "{\"action\":\"\x01\"}", "{\"action\":\"\xff\"}",
	"{\"action\":\"caf\xc3\xa9\"}", `{"action":null}`, `{"action":1}`, `{"action":true}`, `{"action":["a"]}`,
	`{"Action":"create"}`, `{"unknown":"x"}`, `{"[ext]":"x"}`, `{"action":"a" "workflow_id":"b"}`,
	`[]`, `"create"`, ``, `{`, `}`, `{"action"}`, `{"action":}`, `{:"create"}`, `{'action':'create'}`,
	"\ufeff{\"action\":\"create\"}", `{"action":"create"}` + "\x00",
}

// plainJSONTypes are the messages the differential tests decode into: a
// create call's request and every message of the gateway's services.
func plainJSONTypes() []protoreflect.MessageType {
	types := []protoreflect.MessageType{(&agentv1.CreateSessionRequest{}).ProtoReflect().Type()}
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		if strings.HasPrefix(string(mt.Descriptor().FullName()), "workflow.") {
			types = append(types, mt)
		}
		return true
	})
	return types
}

// checkPlainJSON wants plainJSONMessage to take body only when protojson
// decodes it, and then to the bytes proto.Marshal makes of protojson's
// message.
func checkPlainJSON(t *testing.T, mt protoreflect.MessageType, body []byte) bool {
	t.Helper()
	got, ok := plainJSONMessage(body, plainFields(mt.Descriptor()))
	if !ok {
		return false
	}
	msg := mt.New().Interface()
	if err := (protojson.UnmarshalOptions{Resolver: protoregistry.GlobalTypes}).Unmarshal(body, msg); err != nil {
		t.Fatalf("%s: %q decoded directly, protojson refuses it: %v", mt.Descriptor().FullName(), body, err)
	}
	want, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %q decoded directly to %x, protojson to %v (%x)", mt.Descriptor().FullName(), body, got, msg, want)
	}
	return true
}

func TestPlainJSONMatchesProtojson(t *testing.T) {
	t.Parallel()
	for _, mt := range plainJSONTypes() {
		for _, seed := range plainJSONSeeds {
			checkPlainJSON(t, mt, []byte(seed))
		}
	}
	// The direct decoding must take the create calls it is for.
	create := (&agentv1.CreateSessionRequest{}).ProtoReflect().Type()
	for _, body := range []string{`{"action":"create"}`, ` { "action" : "edit" , "workflowId" : "wf-1" } `, `{}`} {
		if !checkPlainJSON(t, create, []byte(body)) {
			t.Errorf("%q was left to protojson", body)
		}
	}
}

func FuzzPlainJSON(f *testing.F) {
	for _, seed := range plainJSONSeeds {
		f.Add([]byte(seed))
	}
	types := plainJSONTypes()
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, mt := range types {
			checkPlainJSON(t, mt, body)
		}
	})
}

// checkPlainOutput wants plainOutput to write the message whose encoding
// is wire only when proto.Unmarshal and protojson take it, and then to
// write what protojson writes with the direct path's options.
func checkPlainOutput(t *testing.T, mt protoreflect.MessageType, wire []byte) bool {
	t.Helper()
	out := newPlainOutput(mt.Descriptor())
	if out == nil {
		return false
	}
	got, ok := out.appendJSON([]byte("prefix"), wire)
	if !ok {
		return false
	}
	msg := mt.New().Interface()
	if err := proto.Unmarshal(wire, msg); err != nil {
		t.Fatalf("%s: %x written directly, proto.Unmarshal refuses it: %v", mt.Descriptor().FullName(), wire, err)
	}
	want, err := newRESTFast(1<<20, 1<<20).codec.MarshalAppend([]byte("prefix"), msg)
	if err != nil {
		t.Fatalf("%s: %x written directly, protojson refuses it: %v", mt.Descriptor().FullName(), wire, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: %x written directly as\n%s\nprotojson writes\n%s", mt.Descriptor().FullName(), wire, got, want)
	}
	return true
}

// plainOutputSeeds are encodings around the edges of what plainOutput
// writes.
func plainOutputSeeds(t testing.TB) [][]byte {
	seeds := [][]byte{nil, {}, {0x0a, 0x00}, {0x0a, 0x01, '"'}, {0x0a, 0x02, 0xc3, 0xa9}, {0x0a, 0x01, 0xff},
		{0x0a, 0x01, 'a', 0x0a, 0x01, 'b'}, {0x08, 0x01}, {0x12, 0x00}, {0x12, 0x02, 0x08, 0x01}, {0xfa, 0x01, 0x00}}
	for _, ts := range []*timestamppb.Timestamp{
		{}, {Seconds: 1735689600}, {Seconds: 1735689600, Nanos: 1}, {Seconds: 1735689600, Nanos: 1000},
		{Seconds: 1735689600, Nanos: 1000000}, {Seconds: 1735689600, Nanos: 120000000}, {Seconds: -1, Nanos: 999999999},
		{Seconds: -62135596800}, {Seconds: -62135596801}, {Seconds: 253402300799}, {Seconds: 253402300800},
		{Nanos: -1}, {Nanos: 1000000000},
	} {
		for _, id := range []string{"", "bench-null-session", "a b", "tab\t", "quote\"", "uni\u2028", "<&>"} {
			b, err := proto.Marshal(&agentv1.CreateSessionResponse{SessionId: id, CreatedAt: ts})
			if err != nil {
				t.Fatal(err)
			}
			seeds = append(seeds, b)
		}
	}
	return seeds
}

func TestPlainOutputMatchesProtojson(t *testing.T) {
	t.Parallel()
	for _, mt := range plainJSONTypes() {
		for _, seed := range plainOutputSeeds(t) {
			checkPlainOutput(t, mt, seed)
		}
	}
	// The direct writing must take the create calls' answers it is for.
	created := (&agentv1.CreateSessionResponse{}).ProtoReflect().Type()
	for _, res := range []*agentv1.CreateSessionResponse{
		{SessionId: "bench-null-session", CreatedAt: timestamppb.New(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))},
		{SessionId: "s-1", CreatedAt: &timestamppb.Timestamp{Seconds: 1735689600, Nanos: 123456789}}, {},
	} {
		wire, err := proto.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		if !checkPlainOutput(t, created, wire) {
			t.Errorf("%v was left to protojson", res)
		}
	}
}

func FuzzPlainOutput(f *testing.F) {
	for _, seed := range plainOutputSeeds(f) {
		f.Add(seed)
	}
	types := plainJSONTypes()
	f.Fuzz(func(t *testing.T, wire []byte) {
		for _, mt := range types {
			checkPlainOutput(t, mt, wire)
		}
	})
}
