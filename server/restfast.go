package server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/encoding/protojson"
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
	// plainOut writes the output directly, when it is plain and sent
	// whole; nil otherwise.
	plainOut *plainOutput
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
	} else {
		route.plainOut = newPlainOutput(output.Descriptor())
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
	b := new(bufferedBody)
	b.set(data)
	return b
}

// set makes b the body data, read from its start.
func (b *bufferedBody) set(data []byte) {
	b.data = data
	b.Reset(data)
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
	buf := jsonBodies.Get().(*[]byte) //nolint:forcetypeassert // the pool's own
	defer putJSONBody(buf)
	body, plain := (*buf)[:0], false
	if route.plainOut != nil {
		body, plain = route.plainOut.appendJSON(body, conn.res.data)
	}
	var err error
	if !plain {
		out := route.output.New().Interface()
		if err = proto.Unmarshal(conn.res.data, out); err == nil {
			if route.field == nil {
				body, err = f.codec.MarshalAppend(body[:0], out)
			} else {
				body, err = f.codec.MarshalAppendField(body[:0], out, route.field)
			}
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
