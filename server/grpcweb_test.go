package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// grpcWebModes are the wire formats of Google's grpc-web client: binary,
// and base64 text (its default), under both names the text mode goes by.
var grpcWebModes = []struct {
	name, contentType, wantContentType string
	text                               bool
}{
	{"binary", "application/grpc-web+proto", "application/grpc-web+proto", false},
	{"text", "application/grpc-web-text", "application/grpc-web-text+proto", true},
	{"text+proto", "application/grpc-web-text+proto", "application/grpc-web-text+proto", true},
}

// chatProcedure is the agent's server stream; executeProcedure is in
// edge_test.go.
const chatProcedure = "/workflow.agent.v1.WorkflowAgentService/Chat"

// wordAgent streams the words of the user's message, one message each:
// "fail" ends the stream with an error once sent, "wait" holds it open
// until the caller leaves.
type wordAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
}

func (wordAgent) Chat(ctx context.Context, req *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	for _, word := range strings.Fields(req.Msg.GetUserMessage()) {
		if err := stream.Send(&agentv1.ChatResponse{Type: "message", Content: word}); err != nil {
			return err
		}
		switch word {
		case "fail":
			return connect.NewError(connect.CodeInternal, errors.New("model went away: retry later"))
		case "wait":
			<-ctx.Done()
			return ctx.Err()
		}
	}
	return nil
}

// startGRPCWebGateway is a gateway in front of the test engine and the
// word agent.
func startGRPCWebGateway(tb testing.TB, tweak func(*Config)) string {
	tb.Helper()
	cfg := startTestBackends(tb).cfg
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(wordAgent{}))
	cfg.Agent = Upstream{Address: startH2C(tb, mux).Listener.Addr().String()}
	if tweak != nil {
		tweak(&cfg)
	}
	_, url := startGateway(tb, cfg)
	return url
}

// webResponse is a gRPC-Web response taken apart: its data frames, the
// raw text of its trailer frame, and the status it carries.
type webResponse struct {
	res      *http.Response
	messages [][]byte
	trailer  string
	status   http.Header // from the trailer frame, or the headers of a trailers-only response
}

func (r webResponse) code() connect.Code {
	n, _ := strconv.Atoi(r.status.Get("grpc-status"))
	return connect.Code(n) //nolint:gosec // codes are small
}

// webRequest builds a gRPC-Web request carrying msg. In text mode the body
// is two base64 chunks, each padded, as the grpc-web client sends a body
// written in pieces.
func webRequest(tb testing.TB, url, procedure, contentType string, text bool, msg proto.Message) *http.Request {
	tb.Helper()
	data, err := proto.Marshal(msg)
	if err != nil {
		tb.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(data))) //nolint:gosec // small
	body = append(body, data...)
	if text {
		cut := 4 // not a multiple of 3: the first chunk ends in padding
		body = []byte(base64.StdEncoding.EncodeToString(body[:cut]) + base64.StdEncoding.EncodeToString(body[cut:]))
	}
	req, err := http.NewRequestWithContext(tb.(interface{ Context() context.Context }).Context(), http.MethodPost, url+procedure, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("X-Grpc-Web", "1")
	if text {
		req.Header.Set("Accept", "application/grpc-web-text")
	}
	return req
}

// callWeb sends req over HTTP/1.1, as browsers do, and takes the whole
// response apart.
func callWeb(tb testing.TB, req *http.Request, text bool) webResponse {
	tb.Helper()
	res, err := http1Client(tb).Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if text {
		raw = decodeChunkedBase64(tb, raw)
	}
	return parseWebFrames(tb, res, raw)
}

// decodeChunkedBase64 decodes base64 that may hold padding mid-stream (one
// padded chunk per flush), quantum by quantum as browsers' clients do.
func decodeChunkedBase64(tb testing.TB, text []byte) []byte {
	tb.Helper()
	if len(text)%4 != 0 {
		tb.Fatalf("base64 body of %d characters is not whole quanta: %q", len(text), text)
	}
	var out []byte
	for i := 0; i < len(text); i += 4 {
		b, err := base64.StdEncoding.DecodeString(string(text[i : i+4]))
		if err != nil {
			tb.Fatalf("body is not base64 at %d: %v: %q", i, err, text)
		}
		out = append(out, b...)
	}
	return out
}

// parseWebFrames splits a binary gRPC-Web body into its frames. The
// trailer frame must come last, once, and name every trailer in lower
// case as the gRPC-Web spec asks.
func parseWebFrames(tb testing.TB, res *http.Response, body []byte) webResponse {
	tb.Helper()
	out := webResponse{res: res, status: http.Header{}}
	for len(body) > 0 {
		if len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) > len(body)-5 {
			tb.Fatalf("truncated frame: %q", body)
		}
		flags, payload := body[0], body[5:5+binary.BigEndian.Uint32(body[1:5])]
		body = body[5+len(payload):]
		if flags&0x80 == 0 {
			out.messages = append(out.messages, payload)
			continue
		}
		if len(body) > 0 {
			tb.Fatalf("frames after the trailer frame: %q", body)
		}
		out.trailer = string(payload)
		for line := range strings.SplitSeq(strings.TrimSuffix(out.trailer, "\r\n"), "\r\n") {
			name, value, ok := strings.Cut(line, ":")
			if !ok || name != strings.ToLower(name) {
				tb.Errorf("trailer line %q: names must be lower case", line)
			}
			out.status.Add(name, strings.TrimSpace(value))
		}
	}
	if out.trailer == "" {
		// A trailers-only response: the status is in the headers.
		for _, name := range []string{"Grpc-Status", "Grpc-Message"} {
			if v := res.Header.Get(name); v != "" {
				out.status.Set(name, v)
			}
		}
	}
	return out
}

// wantWebStatus checks a response's content type and status.
func wantWebStatus(tb testing.TB, r webResponse, contentType string, code connect.Code, message string) {
	tb.Helper()
	if r.res.StatusCode != http.StatusOK || r.res.Header.Get("Content-Type") != contentType {
		tb.Fatalf("HTTP %d, Content-Type %q, want 200 %q; status %v", r.res.StatusCode, r.res.Header.Get("Content-Type"), contentType, r.status)
	}
	if r.status.Get("grpc-status") == "" || r.code() != code {
		tb.Errorf("grpc-status %q, want %d (%s); trailer %q", r.status.Get("grpc-status"), code, code, r.trailer)
	}
	if got := r.status.Get("grpc-message"); !strings.Contains(got, message) {
		tb.Errorf("grpc-message %q, want it to contain %q", got, message)
	}
}

func TestGRPCWebUnary(t *testing.T) {
	t.Parallel()
	url := startGRPCWebGateway(t, nil)
	for _, mode := range grpcWebModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			call := func(name string) webResponse {
				msg := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}}
				return callWeb(t, webRequest(t, url, executeProcedure, mode.contentType, mode.text, msg), mode.text)
			}
			ok := call("hello-" + mode.name)
			wantWebStatus(t, ok, mode.wantContentType, 0, "")
			var res enginev1.ExecuteWorkflowResponse
			if len(ok.messages) != 1 || proto.Unmarshal(ok.messages[0], &res) != nil || res.GetResult().GetOutput().GetStringValue() != "hello-"+mode.name {
				t.Errorf("messages %q, want one result echoing the name", ok.messages)
			}
			if ok.status.Get("x-backend-trailer") != "t" {
				t.Errorf("backend trailer lost: %q", ok.trailer)
			}

			missing := call("missing")
			wantWebStatus(t, missing, mode.wantContentType, connect.CodeNotFound, "no such workflow")
			invalid := call("invalid")
			wantWebStatus(t, invalid, mode.wantContentType, connect.CodeInvalidArgument, "workflow_definition.nodes[0].type: unknown node type")
			if len(missing.messages)+len(invalid.messages) != 0 {
				t.Errorf("a failed call carried messages: %q %q", missing.messages, invalid.messages)
			}
		})
	}
}

func TestGRPCWebServerStream(t *testing.T) {
	t.Parallel()
	url := startGRPCWebGateway(t, nil)
	for _, mode := range grpcWebModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			chat := func(words string) (webResponse, []string) {
				r := callWeb(t, webRequest(t, url, chatProcedure, mode.contentType, mode.text, &agentv1.ChatRequest{SessionId: "s", UserMessage: words}), mode.text)
				var got []string
				for _, m := range r.messages {
					var msg agentv1.ChatResponse
					if err := proto.Unmarshal(m, &msg); err != nil {
						t.Fatalf("message %q: %v", m, err)
					}
					got = append(got, msg.GetContent())
				}
				return r, got
			}
			ok, words := chat("one two three")
			wantWebStatus(t, ok, mode.wantContentType, 0, "")
			if strings.Join(words, " ") != "one two three" {
				t.Errorf("messages %q", words)
			}

			failed, words := chat("one fail")
			wantWebStatus(t, failed, mode.wantContentType, connect.CodeInternal, "model went away: retry later")
			if strings.Join(words, " ") != "one fail" {
				t.Errorf("messages before the error %q", words)
			}
			if !strings.Contains(failed.trailer, "grpc-status: 13\r\n") || !strings.Contains(failed.trailer, "grpc-message: model went away") {
				t.Errorf("trailer frame %q", failed.trailer)
			}
		})
	}
}

// TestGRPCWebTextStreamsFrameByFrame checks that a text-mode stream
// reaches the caller message by message while it is still open: each
// flush must end in whole base64 quanta, or the last bytes of a message
// would wait for the next one.
func TestGRPCWebTextStreamsFrameByFrame(t *testing.T) {
	t.Parallel()
	url := startGRPCWebGateway(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req := webRequest(t, url, chatProcedure, "application/grpc-web-text", true, &agentv1.ChatRequest{SessionId: "s", UserMessage: "one two wait"})
	res, err := http1Client(t).Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "application/grpc-web-text+proto" {
		t.Fatalf("Content-Type %q", ct)
	}
	var text []byte
	buf := make([]byte, 1024)
	for {
		// The stream stays open after "wait": the messages must arrive
		// before the call ends.
		n, err := res.Body.Read(buf)
		text = append(text, buf[:n]...)
		got := completeMessages(t, decodeChunkedBase64(t, text[:len(text)-len(text)%4]))
		if strings.Join(got, " ") == "one two wait" {
			return
		}
		if err != nil {
			t.Fatalf("after %q (%q): %v", got, text, err)
		}
	}
}

// completeMessages decodes the chat messages of the whole frames in data.
func completeMessages(tb testing.TB, data []byte) []string {
	tb.Helper()
	var out []string
	for len(data) >= 5 && int(binary.BigEndian.Uint32(data[1:5])) <= len(data)-5 {
		payload := data[5 : 5+binary.BigEndian.Uint32(data[1:5])]
		var msg agentv1.ChatResponse
		if err := proto.Unmarshal(payload, &msg); err != nil {
			tb.Fatalf("message %q: %v", payload, err)
		}
		out = append(out, msg.GetContent())
		data = data[5+len(payload):]
	}
	return out
}

func TestGRPCWebTextBadBase64(t *testing.T) {
	t.Parallel()
	url := startGRPCWebGateway(t, nil)
	for _, body := range []string{"AAAA*AAA", "AAAAAA"} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+executeProcedure, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/grpc-web-text")
		r := callWeb(t, req, true)
		wantWebStatus(t, r, "application/grpc-web-text+proto", connect.CodeInvalidArgument, "base64")
	}
}

// TestGRPCWebTextErrorsBeforeTheTranscoder checks that what the gateway
// refuses before a call is transcoded (no credentials, a body over the
// limit) reaches a text-mode caller in text mode.
func TestGRPCWebTextErrorsBeforeTheTranscoder(t *testing.T) {
	t.Parallel()
	sec, _ := secConfig(t)
	url := startGRPCWebGateway(t, func(cfg *Config) { cfg.Security = sec })
	msg := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "x"}}
	for _, mode := range grpcWebModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			r := callWeb(t, webRequest(t, url, executeProcedure, mode.contentType, mode.text, msg), mode.text)
			wantWebStatus(t, r, mode.wantContentType, connect.CodeUnauthenticated, "")

			big := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: strings.Repeat("x", testMaxBody)}}
			req := webRequest(t, url, executeProcedure, mode.contentType, mode.text, big)
			req.Header.Set("X-Api-Key", testAPIKey)
			r = callWeb(t, req, mode.text)
			wantWebStatus(t, r, mode.wantContentType, connect.CodeResourceExhausted, strconv.Itoa(testMaxBody))
		})
	}
}

// TestGRPCWebCORS checks a browser's cross-origin gRPC-Web call: the
// preflight for the headers Google's client sends, then a text-mode call
// whose status headers the page may read.
func TestGRPCWebCORS(t *testing.T) {
	t.Parallel()
	url := startGRPCWebGateway(t, nil)
	const origin = "http://localhost:3000"
	pre, _ := http.NewRequestWithContext(t.Context(), http.MethodOptions, url+executeProcedure, nil)
	pre.Header.Set("Origin", origin)
	pre.Header.Set("Access-Control-Request-Method", "POST")
	pre.Header.Set("Access-Control-Request-Headers", "content-type,x-grpc-web,x-user-agent")
	res, err := http1Client(t).Do(pre)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	allowed := strings.ToLower(res.Header.Get("Access-Control-Allow-Headers"))
	if res.StatusCode >= 300 || res.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(allowed, "x-grpc-web") || !strings.Contains(allowed, "x-user-agent") {
		t.Fatalf("preflight %d: %v", res.StatusCode, res.Header)
	}

	msg := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "missing"}}
	req := webRequest(t, url, executeProcedure, "application/grpc-web-text", true, msg)
	req.Header.Set("Origin", origin)
	r := callWeb(t, req, true)
	wantWebStatus(t, r, "application/grpc-web-text+proto", connect.CodeNotFound, "no such workflow")
	exposed := strings.ToLower(r.res.Header.Get("Access-Control-Expose-Headers"))
	if r.res.Header.Get("Access-Control-Allow-Origin") != origin || !strings.Contains(exposed, "grpc-status") || !strings.Contains(exposed, "grpc-message") {
		t.Errorf("CORS headers of the call: %v", r.res.Header)
	}
}
