package server

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// frame is one message of a forwarded call, kept as the bytes of its binary
// protobuf encoding. The forwarders never decode what they pass on: the
// transcoder in front of them hands them binary protobuf whatever the caller
// spoke, and the upstream clients send it on unchanged.
type frame struct {
	data []byte
}

// passthroughCodec is a connect.Codec named "proto" that keeps the bytes of
// forwarded messages as they are. Other messages, such as the
// google.rpc.Status of an upstream error, are still real protobuf.
type passthroughCodec struct{}

func (passthroughCodec) Name() string { return "proto" }

func (c passthroughCodec) Marshal(msg any) ([]byte, error) {
	return c.MarshalAppend(nil, msg)
}

// MarshalAppend lets connect append into its pooled buffer instead of
// allocating a copy.
func (passthroughCodec) MarshalAppend(dst []byte, msg any) ([]byte, error) {
	switch m := msg.(type) {
	case *frame:
		return append(dst, m.data...), nil
	case proto.Message:
		return proto.MarshalOptions{}.MarshalAppend(dst, m)
	}
	return nil, fmt.Errorf("passthrough codec: cannot marshal %T", msg)
}

func (passthroughCodec) Unmarshal(data []byte, msg any) error {
	switch m := msg.(type) {
	case *frame:
		// connect reuses data's buffer once Unmarshal returns.
		m.data = append(m.data[:0], data...)
		return nil
	case proto.Message:
		return proto.Unmarshal(data, m)
	}
	return fmt.Errorf("passthrough codec: cannot unmarshal into %T", msg)
}
