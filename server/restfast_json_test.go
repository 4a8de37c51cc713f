package server

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

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
