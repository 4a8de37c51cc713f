package server

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/flowgate/flowgate/internal/apierr"
)

// restFast serves the commonest REST calls, a POST of a JSON body to a
// route without path variables, without the transcoder. The transcoder
// would turn the call into an in-process gRPC call (an HTTP request with
// an enveloped message, a gRPC response with trailers, and back), which
// cost a third of a REST call. restFast decodes the body with the
// transcoder's own codec and runs the same interceptors around the same
// forwarder, through the connection adapter the grpc-go path uses. What it
// does not take on as the transcoder would (a query string, a deadline
// header, a body that does not decode, anything over a limit) it leaves
// to the transcoder before anything is decided, so that every error is
// the transcoder's as before.
type restFast struct {
	// routes are by path, for POST.
	routes map[string]*restRoute
	codec  jsonCodec
	// maxRequest is the largest body or message the transcoder and the
	// forwarding handler take; maxResponse the largest response message
	// the transcoder holds.
	maxRequest, maxResponse int
	served                  atomic.Int64 // calls, for tests
}

// restRoute is one REST route restFast serves.
type restRoute struct {
	spec    connect.Spec
	handler connect.StreamingHandlerFunc // wrapped in the interceptors
	input   protoreflect.MessageType
	output  protoreflect.MessageType
	// field is the response_body field, nil for the whole message.
	field protoreflect.FieldDescriptor
	// plain is the input's fields by JSON name, see plainJSONMessage.
	plain map[string]protoreflect.FieldDescriptor
}

func newRESTFast(maxRequest, maxResponse int) *restFast {
	res := protoregistry.GlobalTypes
	return &restFast{
		routes: map[string]*restRoute{},
		codec: jsonCodec{vanguard.JSONCodec{
			MarshalOptions:   protojson.MarshalOptions{Resolver: res, UseProtoNames: true, EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{Resolver: res},
		}},
		maxRequest:  maxRequest,
		maxResponse: maxResponse,
	}
}

// add serves method's REST route when it is one restFast can: a unary
// POST of the whole body to a path without variables.
func (f *restFast) add(procedure string, method protoreflect.MethodDescriptor, chain []connect.Interceptor, handler connect.StreamingHandlerFunc) {
	rule, _ := proto.GetExtension(method.Options(), annotations.E_Http).(*annotations.HttpRule)
	path := rule.GetPost()
	if path == "" || rule.GetBody() != "*" || strings.ContainsAny(path, "{}:*") ||
		method.IsStreamingClient() || method.IsStreamingServer() {
		return
	}
	input, err := protoregistry.GlobalTypes.FindMessageByName(method.Input().FullName())
	if err != nil {
		return
	}
	output, err := protoregistry.GlobalTypes.FindMessageByName(method.Output().FullName())
	if err != nil {
		return
	}
	route := &restRoute{spec: methodSpec(procedure, method), handler: wrapChain(chain, handler), input: input, output: output,
		plain: plainFields(input.Descriptor())}
	if name := rule.GetResponseBody(); name != "" {
		if route.field = method.Output().Fields().ByName(protoreflect.Name(name)); route.field == nil {
			return
		}
	}
	f.routes[path] = route
}

// postPaths are the paths of the routes f serves, all POST.
func (f *restFast) postPaths() []string {
	if f == nil {
		return nil
	}
	paths := make([]string, 0, len(f.routes))
	for p := range f.routes {
		paths = append(paths, p)
	}
	return paths
}

// bufferedBody is a REST request body the edge has read whole.
type bufferedBody struct {
	bytes.Reader
	data []byte
}

func newBufferedBody(data []byte) *bufferedBody {
	b := &bufferedBody{data: data}
	b.Reset(data)
	return b
}

func (*bufferedBody) Close() error { return nil }

// serve serves r, with the URL the REST layer prepared, in ctx if it can,
// and reports whether it did; when it did not, r is as it was, body
// included.
func (f *restFast) serve(ctx context.Context, w *restWriter, r *http.Request, u *url.URL) bool {
	if f == nil || r.Method != http.MethodPost || u.RawQuery != "" {
		return false
	}
	route := f.routes[u.Path]
	body, ok := r.Body.(*bufferedBody)
	h := r.Header
	if route == nil || !ok || len(body.data) > f.maxRequest || body.Len() != len(body.data) ||
		len(h["Content-Type"]) != 1 || h["Content-Type"][0] != "application/json" ||
		h["Content-Encoding"] != nil || h["X-Server-Timeout"] != nil {
		return false
	}
	msg, ok := plainJSONMessage(body.data, route.plain)
	if !ok {
		in := route.input.New().Interface()
		if f.codec.Unmarshal(body.data, in) != nil {
			return false
		}
		var err error
		if msg, err = proto.Marshal(in); err != nil {
			return false
		}
	}
	if len(msg) > f.maxRequest {
		return false
	}
	// What the transcoder removes before its call, and what it answers
	// with whatever the handler said.
	delete(h, "Content-Type")
	delete(h, "Accept-Encoding")
	f.served.Add(1)
	conn := &w.conn
	*conn = restConn{
		spec:    route.spec,
		peer:    connect.Peer{Addr: r.RemoteAddr, Protocol: connect.ProtocolGRPC},
		header:  h,
		req:     frame{data: msg},
		resHead: w.Header(),
		trailer: http.Header{},
	}
	if err := route.handler(ctx, conn); err != nil {
		w.fail(err)
		return true
	}
	f.respond(w, route, conn)
	return true
}

// respond writes a forwarded call's response as the transcoder does.
func (f *restFast) respond(w *restWriter, route *restRoute, conn *restConn) {
	if conn.res == nil {
		w.fail(connect.NewError(connect.CodeInternal, errNoResponse))
		return
	}
	if len(conn.res.data) > f.maxResponse {
		w.failWith(upstreamTooLarge())
		return
	}
	out := route.output.New().Interface()
	buf := jsonBodies.Get().(*[]byte) //nolint:forcetypeassert // the pool's own
	defer putJSONBody(buf)
	body := (*buf)[:0]
	err := proto.Unmarshal(conn.res.data, out)
	if err == nil {
		if route.field == nil {
			body, err = f.codec.MarshalAppend(body, out)
		} else {
			body, err = f.codec.MarshalAppendField(body, out, route.field)
		}
	}
	*buf = body
	if err != nil {
		w.fail(connect.NewError(connect.CodeInternal, err))
		return
	}
	// The transcoder drops a unary call's trailers from REST responses.
	// Both values share one allocation; each slice is full, so an append
	// to either copies.
	vals := []string{"application/json", strconv.Itoa(len(body))}
	head := w.Header()
	head["Content-Type"] = vals[0:1:1]
	head["Content-Length"] = vals[1:2:2]
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body) // writers copy what they keep: body goes back to the pool
}

// jsonBodies are buffers for responses' JSON, which the encoder would
// otherwise grow from nothing on every call.
var jsonBodies = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledJSON bounds the buffers kept, so that one large response does
// not pin its memory.
const maxPooledJSON = 64 << 10

func putJSONBody(buf *[]byte) {
	if cap(*buf) <= maxPooledJSON {
		*buf = (*buf)[:0]
		jsonBodies.Put(buf)
	}
}

var errNoResponse = apierr.Public("the upstream sent no response")

// restConn is a REST call as a Connect handler connection, with its
// request already decoded and its response kept for restFast to write.
type restConn struct {
	spec    connect.Spec
	peer    connect.Peer
	header  http.Header
	req     frame
	read    bool
	res     *frame
	resHead http.Header
	trailer http.Header
}

func (c *restConn) Spec() connect.Spec           { return c.spec }
func (c *restConn) Peer() connect.Peer           { return c.peer }
func (c *restConn) RequestHeader() http.Header   { return c.header }
func (c *restConn) ResponseHeader() http.Header  { return c.resHead }
func (c *restConn) ResponseTrailer() http.Header { return c.trailer }

func (c *restConn) messageBytes() (int, bool, int) {
	sent := 0
	if c.res != nil {
		sent = len(c.res.data)
	}
	return len(c.req.data), true, sent
}

func (c *restConn) Receive(msg any) error {
	f, ok := msg.(*frame)
	if !ok || c.read {
		return io.EOF
	}
	c.read = true
	f.data = c.req.data
	return nil
}

func (c *restConn) Send(msg any) error {
	f, ok := msg.(*frame)
	if !ok || c.res != nil {
		return connect.NewError(connect.CodeInternal, errNoResponse)
	}
	c.res = f
	return nil
}

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
