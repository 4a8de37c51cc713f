package server

import (
	"reflect"
	"testing"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Only the repeated scalar fields a route's query string can set may be
// repeated: through nested messages, by field and JSON name, and not the
// fields of a route that takes its whole message from the body.
func TestListParams(t *testing.T) {
	t.Parallel()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	rep := descriptorpb.FieldDescriptorProto_LABEL_REPEATED.Enum()
	str := descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()
	msg := descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum()
	field := func(name string, n int32, typ *descriptorpb.FieldDescriptorProto_Type, label *descriptorpb.FieldDescriptorProto_Label, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{Name: proto.String(name), Number: proto.Int32(n), Type: typ, Label: label}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	routed := func(rule *annotations.HttpRule) *descriptorpb.MethodOptions {
		o := &descriptorpb.MethodOptions{}
		proto.SetExtension(o, annotations.E_Http, rule)
		return o
	}
	fdp := &descriptorpb.FileDescriptorProto{
		Name: proto.String("flowgate/paramtest/v1/things.proto"), Package: proto.String("flowgate.paramtest.v1"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("ListRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("page_size", 1, str, opt, ""),
				field("only_tags", 2, str, rep, ""),
				field("filter", 3, msg, opt, ".flowgate.paramtest.v1.Filter"),
				field("filters", 4, msg, rep, ".flowgate.paramtest.v1.Filter"),
			}},
			{Name: proto.String("Filter"), Field: []*descriptorpb.FieldDescriptorProto{
				field("ids", 1, str, rep, ""),
				field("name", 2, str, opt, ""),
			}},
			{Name: proto.String("CreateRequest"), Field: []*descriptorpb.FieldDescriptorProto{
				field("labels", 1, str, rep, ""),
			}},
			{Name: proto.String("Thing")},
		},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("ThingService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("List"), InputType: proto.String(".flowgate.paramtest.v1.ListRequest"), OutputType: proto.String(".flowgate.paramtest.v1.Thing"),
					Options: routed(&annotations.HttpRule{Pattern: &annotations.HttpRule_Get{Get: "/v1/things"}})},
				{Name: proto.String("Create"), InputType: proto.String(".flowgate.paramtest.v1.CreateRequest"), OutputType: proto.String(".flowgate.paramtest.v1.Thing"),
					Options: routed(&annotations.HttpRule{Pattern: &annotations.HttpRule_Post{Post: "/v1/things"}, Body: "*"})},
			},
		}},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := listParams([]protoreflect.ServiceDescriptor{fd.Services().Get(0)})
	want := map[string]bool{"only_tags": true, "onlyTags": true, "filter.ids": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("list parameters %v, want %v", got, want)
	}
	if err := checkQueryRepeats("only_tags=a&only_tags=b&filter.ids=1&filter.ids=2&page_size=3", got); err != nil {
		t.Errorf("lists refused: %v", err)
	}
	if err := checkQueryRepeats("only_tags=a&page_size=3&page_size=4", got); err == nil {
		t.Error("a scalar given twice was accepted")
	}
	// The gateway's own routes take no lists in their query strings.
	var descs []protoreflect.ServiceDescriptor
	for _, svc := range services() {
		descs = append(descs, svc.desc)
	}
	if lists := listParams(descs); len(lists) != 0 {
		t.Errorf("the gateway's routes take lists %v", lists)
	}
}
