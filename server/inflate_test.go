package server

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
)

func gzipped(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(data)
	_ = zw.Close()
	return buf.Bytes()
}

// compressedCall is one protocol's way of sending a compressed request.
type compressedCall struct {
	name        string
	path        string
	contentType string
	header      map[string]string
	http2       bool
	chunked     bool
	// body builds the request body around a message (JSON for REST, proto
	// otherwise), compressed.
	body func(tb testing.TB, msg []byte) []byte
}

func wholeBody(tb testing.TB, msg []byte) []byte { return gzipped(tb, msg) }
func enveloped(tb testing.TB, msg []byte) []byte { return envelope(gzipped(tb, msg), true) }
func chatProto(tb testing.TB, session string) []byte {
	return mustMarshal(tb, &agentv1.ChatRequest{SessionId: session})
}

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	data, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

const executePath = "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow"

var compressedCalls = []compressedCall{
	{name: "rest", path: "/api/v1/workflow/execute", contentType: "application/json",
		header: map[string]string{"Content-Encoding": "gzip"}, body: wholeBody},
	{name: "rest chunked", path: "/api/v1/workflow/execute", contentType: "application/json",
		header: map[string]string{"Content-Encoding": "gzip"}, body: wholeBody, chunked: true},
	{name: "connect unary", path: executePath, contentType: "application/proto",
		header: map[string]string{"Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}, body: wholeBody},
	{name: "connect stream", path: agentv1connect.WorkflowAgentServiceChatProcedure, contentType: "application/connect+proto",
		header: map[string]string{"Connect-Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}, body: enveloped},
	{name: "grpc", path: executePath, contentType: "application/grpc",
		header: map[string]string{"Grpc-Encoding": "gzip", "Te": "trailers"}, body: enveloped, http2: true},
	{name: "grpc chunked", path: executePath, contentType: "application/grpc",
		header: map[string]string{"Grpc-Encoding": "gzip", "Te": "trailers"}, body: enveloped, http2: true, chunked: true},
	{name: "grpc-web", path: executePath, contentType: "application/grpc-web+proto",
		header: map[string]string{"Grpc-Encoding": "gzip", "X-Grpc-Web": "1"}, body: enveloped},
}

// callOutcome is what a caller of any protocol was told.
type callOutcome struct {
	status  int
	code    string // REST contract code, or the RPC code's name
	message string
}

// sendCompressed sends body as call does and decodes the outcome in the
// protocol's own error shape.
func sendCompressed(t *testing.T, url string, call compressedCall, body []byte, header http.Header) callOutcome {
	t.Helper()
	var reader io.Reader = bytes.NewReader(body)
	if call.chunked {
		reader = io.MultiReader(reader) // hides the length: sent without Content-Length
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+call.path, reader)
	req.Header.Set("Content-Type", call.contentType)
	for k, v := range call.header {
		req.Header.Set(k, v)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := http1Client(t)
	if call.http2 {
		client = h2cClient(t)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", call.name, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return decodeOutcome(t, call.contentType, res, data)
}

func decodeOutcome(t *testing.T, contentType string, res *http.Response, data []byte) callOutcome {
	t.Helper()
	out := callOutcome{status: res.StatusCode}
	switch {
	case strings.HasPrefix(contentType, "application/grpc"):
		out.code, out.message = grpcStatus(res, data)
	case strings.HasPrefix(contentType, "application/connect+"):
		out.code, out.message = connectEndStream(t, data)
	default:
		var e struct {
			Error         struct{ Code, Message string } `json:"error"` // REST shape
			Code, Message string                         // Connect unary shape
		}
		if res.StatusCode != http.StatusOK && json.Unmarshal(data, &e) != nil {
			t.Fatalf("error body is not JSON: %q", data)
		}
		out.code, out.message = e.Error.Code+e.Code, e.Error.Message+e.Message
	}
	return out
}

// grpcStatus reads grpc-status and grpc-message from the trailers, the
// headers (trailers-only responses) or a gRPC-Web trailer frame.
func grpcStatus(res *http.Response, body []byte) (string, string) {
	fields := http.Header{}
	for len(body) >= 5 {
		n := int(binary.BigEndian.Uint32(body[1:5]))
		if body[0]&0x80 != 0 && len(body) >= 5+n {
			for _, line := range strings.Split(string(body[5:5+n]), "\r\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					fields.Set(strings.TrimSpace(k), strings.TrimSpace(v))
				}
			}
		}
		body = body[min(len(body), 5+n):]
	}
	for _, h := range []http.Header{res.Trailer, res.Header} {
		for k, v := range h {
			if fields.Get(k) == "" {
				fields[k] = v
			}
		}
	}
	code := "ok"
	if s := fields.Get("Grpc-Status"); s != "0" && s != "" {
		var n int
		_, _ = fmt.Sscan(s, &n)
		code = connect.Code(n).String() //nolint:gosec // a small status code
	}
	return code, fields.Get("Grpc-Message")
}

// connectEndStream reads the error of a Connect streaming response's
// end-stream message.
func connectEndStream(t *testing.T, body []byte) (string, string) {
	t.Helper()
	for len(body) >= 5 {
		n := int(binary.BigEndian.Uint32(body[1:5]))
		if body[0]&0x02 != 0 {
			var end struct {
				Error *struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(body[5:min(len(body), 5+n)], &end); err != nil {
				t.Fatalf("end-stream message is not JSON: %q", body)
			}
			if end.Error == nil {
				return "ok", ""
			}
			return end.Error.Code, end.Error.Message
		}
		body = body[min(len(body), 5+n):]
	}
	t.Fatalf("no end-stream message in %q", body)
	return "", ""
}

// TestCompressionBombRefusedFirst: on every protocol a small compressed
// body that inflates far past the body limit is refused with the size
// error in the protocol's shape before credentials are even looked at
// (the caller sends none), and nothing reaches the backend.
func TestCompressionBombRefusedFirst(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	const inflated = 8 << 20
	wantMsg := fmt.Sprintf("request body exceeds %d bytes once decompressed", testMaxBody)
	for _, call := range compressedCalls {
		t.Run(call.name, func(t *testing.T) {
			t.Parallel()
			m := marker("bomb", call.name)
			var msg []byte
			switch {
			case strings.HasPrefix(call.path, "/api/"):
				msg = []byte(fmt.Sprintf(`{"workflow_definition":{"name":%q}}`, m+strings.Repeat("a", inflated)))
			case call.path == agentv1connect.WorkflowAgentServiceChatProcedure:
				msg = chatProto(t, m+strings.Repeat("a", inflated))
			default:
				msg = mustMarshal(t, executeRequest(m+strings.Repeat("a", inflated), false))
			}
			body := call.body(t, msg)
			if len(body) >= testMaxBody {
				t.Fatalf("bomb is %d bytes on the wire", len(body))
			}
			got := sendCompressed(t, f.url, call, body, nil)
			want := callOutcome{status: http.StatusOK, code: connect.CodeResourceExhausted.String(), message: wantMsg}
			switch {
			case strings.HasPrefix(call.path, "/api/"):
				want = callOutcome{status: http.StatusRequestEntityTooLarge, code: "PAYLOAD_TOO_LARGE", message: wantMsg}
			case call.contentType == "application/proto":
				want.status = http.StatusTooManyRequests // Connect's own mapping of resource_exhausted
			}
			if got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
			for _, c := range f.rec.all() {
				if strings.HasPrefix(c.marker, m) {
					t.Error("the backend received the bomb")
				}
			}
		})
	}
}

// TestCompressedRequestsStillServed: what the guard inflates within the
// limit reaches the backend intact, on every protocol.
func TestCompressedRequestsStillServed(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	auth := bearer(hsToken(t, nil))
	for _, call := range compressedCalls {
		t.Run(call.name, func(t *testing.T) {
			t.Parallel()
			m := marker("gzip", "ok", call.name)
			var msg []byte
			switch {
			case strings.HasPrefix(call.path, "/api/"):
				msg = []byte(executeJSON(m, false))
			case call.path == agentv1connect.WorkflowAgentServiceChatProcedure:
				msg = chatProto(t, m)
			default:
				msg = mustMarshal(t, executeRequest(m, false))
			}
			got := sendCompressed(t, f.url, call, call.body(t, msg), auth)
			if got.status != http.StatusOK || (got.code != "" && got.code != "ok") {
				t.Errorf("got %+v, want success", got)
			}
			if len(f.rec.find(m)) != 1 {
				t.Errorf("the backend saw %d calls carrying the marker, want 1", len(f.rec.find(m)))
			}
		})
	}
}

// TestEnvelopeInflaterLaterMessages: in a stream of several messages, a
// plain message passes as it is, a compressed one arrives inflated and
// flagged plain, and a bomb later in the stream fails the read with the
// size error rather than inflating.
func TestEnvelopeInflaterLaterMessages(t *testing.T) {
	t.Parallel()
	plain, small := []byte("plain message"), []byte("compressed message")
	var body []byte
	body = append(body, envelope(plain, false)...)
	body = append(body, envelope(gzipped(t, small), true)...)
	body = append(body, envelope(gzipped(t, make([]byte, 4<<20)), true)...)
	in := &envelopeInflater{src: io.NopCloser(bytes.NewReader(body)), limit: 1 << 20}
	got, err := io.ReadAll(in)
	want := append(envelope(plain, false), envelope(small, false)...)
	if !bytes.Equal(got, want) {
		t.Errorf("read %q, want %q", got, want)
	}
	wantMsg := "request message exceeds 1048576 bytes once decompressed"
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), wantMsg) {
		t.Errorf("bomb in the third message: %v, want resource_exhausted %q", err, wantMsg)
	}
}
