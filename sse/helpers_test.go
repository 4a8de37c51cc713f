package sse

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// The tests stream from a service defined here, not from the workflow
// protos: the bridge must work for any server-streaming procedure, and its
// messages are dynamic (not in GlobalTypes), which exercises dynamicpb.
const tickProcedure = "/flowgate.ssetest.v1.TickService/Ticks"

var registerOnce = sync.OnceValue(func() error {
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	i32 := descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum()
	i64 := descriptorpb.FieldDescriptorProto_TYPE_INT64.Enum()
	boolean := descriptorpb.FieldDescriptorProto_TYPE_BOOL.Enum()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	field := func(name string, n int32, t *descriptorpb.FieldDescriptorProto_Type, l *descriptorpb.FieldDescriptorProto_Label) *descriptorpb.FieldDescriptorProto {
		return &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: t, Label: l, JsonName: proto.String(name + "Json")}
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("flowgate/ssetest/v1/tick.proto"),
		Package: proto.String("flowgate.ssetest.v1"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("TicksRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("session_id", 1, str, opt),
				field("count", 2, i32, opt),
				field("after_id", 3, str, opt),
				field("interval_ms", 4, i32, opt),
				field("fail_code", 5, str, opt),
				field("block", 6, boolean, opt),
				field("tags", 7, str, rep),
				field("access_token", 8, str, opt),
			}},
			{Name: proto.String("Tick"), Field: []*descriptorpb.FieldDescriptorProto{
				field("tick_id", 1, str, opt),
				field("text", 2, str, opt),
				field("seq", 3, i64, opt),
			}},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("TickService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Ticks"), InputType: proto.String(".flowgate.ssetest.v1.TicksRequest"), OutputType: proto.String(".flowgate.ssetest.v1.Tick"), ServerStreaming: proto.Bool(true)},
				{Name: proto.String("Once"), InputType: proto.String(".flowgate.ssetest.v1.TicksRequest"), OutputType: proto.String(".flowgate.ssetest.v1.Tick")},
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, protoregistry.GlobalFiles)
	if err != nil {
		return err
	}
	return protoregistry.GlobalFiles.RegisterFile(fd)
})

func tickMethod(t testing.TB) protoreflect.MethodDescriptor {
	t.Helper()
	if err := registerOnce(); err != nil {
		t.Fatal(err)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("flowgate.ssetest.v1.TickService")
	if err != nil {
		t.Fatal(err)
	}
	return d.(protoreflect.ServiceDescriptor).Methods().ByName("Ticks")
}

// tickServer streams count ticks numbered after after_id, interval_ms
// apart, then ends with fail_code (if set) or blocks until cancelled.
type tickServer struct {
	requests  chan *dynamicpb.Message
	cancelled chan time.Time
}

func newTickHandler(t testing.TB) (*tickServer, connect.StreamingHandlerFunc) {
	md := tickMethod(t)
	ts := &tickServer{requests: make(chan *dynamicpb.Message, 16), cancelled: make(chan time.Time, 16)}
	return ts, func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		in := dynamicpb.NewMessage(md.Input())
		if err := conn.Receive(in); err != nil {
			return err
		}
		if err := conn.Receive(dynamicpb.NewMessage(md.Input())); !errors.Is(err, io.EOF) {
			return fmt.Errorf("a second request message: %v", err)
		}
		return ts.serve(ctx, md, in, conn)
	}
}

func (ts *tickServer) serve(ctx context.Context, md protoreflect.MethodDescriptor, in *dynamicpb.Message, stream connect.StreamingHandlerConn) error {
	select {
	case ts.requests <- in:
	default:
	}
	get := func(name string) protoreflect.Value {
		return in.Get(md.Input().Fields().ByName(protoreflect.Name(name)))
	}
	if get("session_id").String() == "missing" {
		return connect.NewError(connect.CodeNotFound, errors.New("session not found"))
	}
	if get("session_id").String() == "" {
		err := connect.NewError(connect.CodeInvalidArgument, errors.New("session_id is required"))
		d, _ := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "session_id", Description: "is required"}}})
		err.AddDetail(d)
		return err
	}
	after, _ := strconv.Atoi(get("after_id").String())
	interval := time.Duration(get("interval_ms").Int()) * time.Millisecond
	out := md.Output().Fields()
	for i := after + 1; i <= after+int(get("count").Int()); i++ {
		if i > after+1 && interval > 0 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				ts.cancelled <- time.Now()
				return ctx.Err()
			}
		}
		msg := dynamicpb.NewMessage(md.Output())
		msg.Set(out.ByName("tick_id"), protoreflect.ValueOfString(strconv.Itoa(i)))
		msg.Set(out.ByName("text"), protoreflect.ValueOfString(fmt.Sprintf("tick %d", i)))
		msg.Set(out.ByName("seq"), protoreflect.ValueOfInt64(int64(i)))
		if err := stream.Send(msg); err != nil {
			return err
		}
	}
	if get("block").Bool() {
		<-ctx.Done()
		ts.cancelled <- time.Now()
		return ctx.Err()
	}
	if code := get("fail_code").String(); code != "" {
		var c connect.Code
		if err := c.UnmarshalText([]byte(code)); err != nil {
			return err
		}
		err := connect.NewError(c, errors.New("upstream says "+code+" at 10.0.0.7:9000"))
		// A tag retry-after=N replaces the Retry-After of 3; an empty N
		// sends none.
		retryAfter := "3"
		tags := get("tags").List()
		for i := range tags.Len() {
			if v, ok := strings.CutPrefix(tags.Get(i).String(), "retry-after="); ok {
				retryAfter = v
			}
		}
		if retryAfter != "" {
			err.Meta().Set("Retry-After", retryAfter)
		}
		return err
	}
	return nil
}

// event is one parsed Server-Sent Event (or a comment, as name ":").
type event struct {
	name, id, data string
	at             time.Time
}

// readEvents parses the stream until EOF or until stop returns true.
func readEvents(t testing.TB, body io.Reader, stop func(event) bool) []event {
	t.Helper()
	var (
		events []event
		cur    event
		seen   bool
	)
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if seen {
				cur.at = time.Now()
				events = append(events, cur)
				if stop != nil && stop(cur) {
					return events
				}
			}
			cur, seen = event{}, false
		case strings.HasPrefix(line, ":"):
			events = append(events, event{name: ":", data: strings.TrimSpace(line[1:]), at: time.Now()})
			if stop != nil && stop(events[len(events)-1]) {
				return events
			}
		default:
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimPrefix(v, " ")
			seen = true
			switch k {
			case "event":
				cur.name = v
			case "id":
				cur.id = v
			case "data":
				cur.data += v
			case "retry":
				cur.name = "retry"
				cur.data = v
			}
		}
	}
	return events
}

func dataEvents(events []event) []event {
	var out []event
	for _, e := range events {
		if e.name == "" {
			out = append(out, e)
		}
	}
	return out
}
