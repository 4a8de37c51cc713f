package server

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
)

// BenchmarkRESTDecode turns a create call's body into the message to
// forward as the direct REST path did (protojson, then proto.Marshal) and
// does (plain members directly).
func BenchmarkRESTDecode(b *testing.B) {
	body := []byte(`{"action":"create"}`)
	mt := (&agentv1.CreateSessionRequest{}).ProtoReflect().Type()
	b.Run("protojson", func(b *testing.B) {
		codec := newRESTFast(1<<20, 1<<20).codec
		b.ReportAllocs()
		for b.Loop() {
			in := mt.New().Interface()
			if err := codec.Unmarshal(body, in); err != nil {
				b.Fatal(err)
			}
			if _, err := proto.Marshal(in); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain", func(b *testing.B) {
		fields := plainFields(mt.Descriptor())
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := plainJSONMessage(body, fields); !ok {
				b.Fatal("not plain")
			}
		}
	})
}

// nopAgent creates a session at once, as the shared benchmark's null
// backend does.
type nopAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
}

var nopSession = &agentv1.CreateSessionResponse{SessionId: "bench-null-session", CreatedAt: timestamppb.New(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))}

func (nopAgent) CreateSession(context.Context, *connect.Request[agentv1.CreateSessionRequest]) (*connect.Response[agentv1.CreateSessionResponse], error) {
	return connect.NewResponse(nopSession), nil
}

// BenchmarkForwardCreate is the shared benchmark's REST call in process:
// {"action":"create"} posted to /api/v1/session over HTTP/1.1 keep-alive,
// through the gateway to a do-nothing agent.
func BenchmarkForwardCreate(b *testing.B) {
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(nopAgent{}))
	_, gw := gatewayBefore(b, mux, Config{})
	benchPost(b, http1Client(b), gw+"/api/v1/session", `{"action":"create"}`, nil)
}

// BenchmarkRESTEncode writes a create call's answer as the direct REST
// path did (proto.Unmarshal, then protojson) and does (plain fields
// directly).
func BenchmarkRESTEncode(b *testing.B) {
	wire, err := proto.Marshal(nopSession)
	if err != nil {
		b.Fatal(err)
	}
	mt := nopSession.ProtoReflect().Type()
	b.Run("protojson", func(b *testing.B) {
		codec := newRESTFast(1<<20, 1<<20).codec
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			out := mt.New().Interface()
			if err := proto.Unmarshal(wire, out); err != nil {
				b.Fatal(err)
			}
			if buf, err = codec.MarshalAppend(buf[:0], out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("plain", func(b *testing.B) {
		out := newPlainOutput(mt.Descriptor())
		var buf []byte
		var ok bool
		b.ReportAllocs()
		for b.Loop() {
			if buf, ok = out.appendJSON(buf[:0], wire); !ok {
				b.Fatal("not plain")
			}
		}
	})
}
