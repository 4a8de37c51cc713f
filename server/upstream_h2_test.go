package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// scriptedUpstream is an HTTP/2 server that answers each gRPC call as a
// script says, so that a test can make an upstream misbehave in ways no
// real server library would. It tells the gateway's own client from
// grpc-go's by their user agents.
type scriptedUpstream struct {
	ln     net.Listener
	answer func(w *scriptWriter, id uint32, call scriptedCall)
	mu     sync.Mutex
	calls  []scriptedCall
	resets []http2.ErrCode
	// deaf makes the upstream answer no ping, as one that hangs.
	deaf atomic.Bool
	wg   sync.WaitGroup
}

// scriptedCall is what the upstream received.
type scriptedCall struct {
	ours    bool // made by the gateway's own client, not grpc-go
	path    string
	timeout string
	header  map[string][]string
	body    []byte
}

func startScripted(tb testing.TB, answer func(w *scriptWriter, id uint32, call scriptedCall)) *scriptedUpstream {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	s := &scriptedUpstream{ln: ln, answer: answer}
	s.wg.Add(1)
	go s.serve()
	tb.Cleanup(func() {
		_ = ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *scriptedUpstream) received() []scriptedCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]scriptedCall(nil), s.calls...)
}

func (s *scriptedUpstream) serve() {
	defer s.wg.Done()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		conns = append(conns, conn)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { _ = conn.Close() }()
			s.conn(conn)
		}()
	}
}

// scriptWriter writes one connection's frames, keeping to the client's
// flow-control windows as a real server must.
type scriptWriter struct {
	conn net.Conn
	mu   sync.Mutex
	more *sync.Cond // signalled when a window grows
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
	// conn and stream send windows, and a new stream's.
	connWindow, initialWindow int
	windows                   map[uint32]int
	closed                    bool
}

// window grows a send window; stream 0 is the connection's.
func (w *scriptWriter) window(id uint32, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if id == 0 {
		w.connWindow += n
	} else {
		w.windows[id] += n
	}
	w.more.Broadcast()
}

// headers writes a header block of name, value pairs.
func (w *scriptWriter) headers(id uint32, endStream bool, fields ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		_ = w.henc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	_ = w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: w.hbuf.Bytes(), EndHeaders: true, EndStream: endStream})
}

// message writes msg as one gRPC message.
func (w *scriptWriter) message(id uint32, flags byte, msg []byte) {
	out := make([]byte, 5, 5+len(msg))
	out[0] = flags
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg))) //nolint:gosec // test sizes
	out = append(out, msg...)
	w.data(id, out)
}

// data writes b in DATA frames as the windows allow.
func (w *scriptWriter) data(id uint32, b []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.windows[id]; !ok {
		w.windows[id] = w.initialWindow
	}
	for len(b) > 0 && !w.closed {
		n := min(len(b), 16384, w.connWindow, w.windows[id])
		if n <= 0 {
			w.more.Wait()
			continue
		}
		_ = w.fr.WriteData(id, false, b[:n])
		w.connWindow -= n
		w.windows[id] -= n
		b = b[n:]
	}
}

// raw runs fn with the connection's writer to itself.
func (w *scriptWriter) raw(fn func(fr *http2.Framer)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn(w.fr)
}

// ok answers a call with msg and status 0.
func (w *scriptWriter) ok(id uint32, msg []byte) {
	w.headers(id, false, ":status", "200", "content-type", "application/grpc")
	w.message(id, 0, msg)
	w.headers(id, true, "grpc-status", "0")
}

func (s *scriptedUpstream) conn(conn net.Conn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(conn, preface); err != nil {
		return
	}
	w := &scriptWriter{conn: conn, fr: http2.NewFramer(conn, conn), connWindow: 65535, initialWindow: 65535, windows: map[uint32]int{}}
	w.more = sync.NewCond(&w.mu)
	w.henc = hpack.NewEncoder(&w.hbuf)
	w.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	w.raw(func(fr *http2.Framer) { _ = fr.WriteSettings() })
	var answers sync.WaitGroup
	defer func() {
		w.mu.Lock()
		w.closed = true
		w.more.Broadcast()
		w.mu.Unlock()
		answers.Wait()
	}()
	calls := map[uint32]*scriptedCall{}
	for {
		f, err := w.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					w.mu.Lock()
					w.initialWindow = int(v)
					w.mu.Unlock()
				}
				w.raw(func(fr *http2.Framer) { _ = fr.WriteSettingsAck() })
			}
		case *http2.WindowUpdateFrame:
			w.window(f.StreamID, int(f.Increment))
		case *http2.PingFrame:
			if !f.IsAck() && !s.deaf.Load() {
				w.raw(func(fr *http2.Framer) { _ = fr.WritePing(true, f.Data) })
			}
		case *http2.RSTStreamFrame:
			s.mu.Lock()
			s.resets = append(s.resets, f.ErrCode)
			s.mu.Unlock()
		case *http2.MetaHeadersFrame:
			call := &scriptedCall{header: map[string][]string{}}
			for _, hf := range f.Fields {
				switch hf.Name {
				case ":path":
					call.path = hf.Value
				case "user-agent":
					call.ours = !strings.Contains(hf.Value, "grpc-go")
				case "grpc-timeout":
					call.timeout = hf.Value
				}
				call.header[hf.Name] = append(call.header[hf.Name], hf.Value)
			}
			calls[f.StreamID] = call
		case *http2.DataFrame:
			call := calls[f.StreamID]
			if call == nil {
				continue
			}
			call.body = append(call.body, f.Data()...)
			if f.StreamEnded() {
				delete(calls, f.StreamID)
				s.mu.Lock()
				s.calls = append(s.calls, *call)
				s.mu.Unlock()
				if call.path == "/grpc.health.v1.Health/Check" {
					w.ok(f.StreamID, nil)
					continue
				}
				answers.Add(1)
				go func(id uint32, call scriptedCall) {
					defer answers.Done()
					s.answer(w, id, call)
				}(f.StreamID, *call)
			}
		}
	}
}

// h2Taken is the calls the gateway's own upstream client sent.
func h2Taken(gw *Gateway) (n int64) {
	for _, p := range gw.pools {
		for _, r := range *p.replicas.Load() {
			if r.h2 != nil {
				n += r.h2.sent.Load()
			}
		}
	}
	return n
}

// waitH2Ready waits until every gRPC replica's own client has a connection.
func waitH2Ready(tb testing.TB, gw *Gateway) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range gw.pools {
		for _, r := range *p.replicas.Load() {
			for r.h2 != nil && r.h2.cur.Load() == nil {
				if time.Now().After(deadline) {
					tb.Fatalf("the upstream client of %s never connected", r.addr)
				}
				r.h2.redial()
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
}

// ownClientGateway starts a gateway whose three upstreams are the gRPC
// server at addr, waits for its own upstream client to connect, and
// returns it, its URL and a gRPC engine client of it.
func ownClientGateway(t *testing.T, addr string) (*Gateway, string, enginev1connect.WorkflowEngineServiceClient) {
	t.Helper()
	up := Upstream{Address: addr}
	gw, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up})
	waitH2Ready(t, gw)
	return gw, url, engineClient(t, url, []connect.ClientOption{connect.WithGRPC()})
}

// nameBackend serves nameEngine on cleartext HTTP/2 and returns its address.
func nameBackend(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(nameEngine{}))
	return startH2C(t, mux).Listener.Addr().String()
}

// h2Outcome is what a gRPC caller of the gateway saw of one call.
type h2Outcome struct {
	Code     connect.Code
	Message  string
	Details  []string
	Header   http.Header
	Trailer  http.Header
	Response string
}

func outcomeOf(res *connect.Response[enginev1.ExecuteWorkflowResponse], err error) h2Outcome {
	var out h2Outcome
	if err != nil {
		var ce *connect.Error
		if !errors.As(err, &ce) {
			return h2Outcome{Message: err.Error()}
		}
		out.Code, out.Message = ce.Code(), ce.Message()
		for _, d := range ce.Details() {
			out.Details = append(out.Details, d.Type()+":"+string(d.Bytes()))
		}
		out.Trailer = forwardedOnly(ce.Meta())
		return out
	}
	out.Header = forwardedOnly(res.Header())
	out.Trailer = forwardedOnly(res.Trailer())
	out.Response = res.Msg.String()
	return out
}

// forwardedOnly keeps the fields an upstream could have set, leaving out
// those every answer carries and the gateway's own.
func forwardedOnly(h http.Header) http.Header {
	out := http.Header{}
	for name, vals := range h {
		if neverForwarded(name) || name == "X-Request-Id" || name == "Traceparent" || name == "Date" {
			continue
		}
		out[name] = vals
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// callBoth makes the same call through a gateway using its own upstream
// client and through one using grpc-go's, before the same upstream.
func callBoth(t *testing.T, addr string, cfg Config, name string) (own, grpcGo h2Outcome, ownTaken int64) {
	t.Helper()
	up := Upstream{Address: addr}
	cfg.Engine, cfg.Agent, cfg.Runtime = up, up, up
	for _, viaGRPCGo := range []bool{false, true} {
		cfg.UpstreamGRPCGo = viaGRPCGo
		gw, url := startGateway(t, cfg)
		if !viaGRPCGo {
			waitH2Ready(t, gw)
		}
		res, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(t.Context(), execute(name))
		if viaGRPCGo {
			grpcGo = outcomeOf(res, err)
		} else {
			own, ownTaken = outcomeOf(res, err), h2Taken(gw)
		}
	}
	return own, grpcGo, ownTaken
}

// The gateway's own upstream client answers callers as grpc-go's does,
// however the upstream answers: each case is played by a scripted upstream
// to a gateway with the client and to one without it, and the callers'
// codes, messages, details, headers, trailers and messages must agree.
func TestH2ClientAnswersAsGRPCGo(t *testing.T) {
	t.Parallel()
	result, err := proto.Marshal(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{Status: "succeeded", Error: "none"}})
	if err != nil {
		t.Fatal(err)
	}
	// Larger than a stream's window: the client must return it as it reads.
	large, _ := proto.Marshal(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{Status: "succeeded", Error: strings.Repeat("e", 200<<10)}})
	details, _ := anypb.New(&spb.Status{Code: 3, Message: "inner"})
	detailed, _ := proto.Marshal(&spb.Status{Code: 9, Message: "precondition failed", Details: []*anypb.Any{details}})
	detailsBin := connect.EncodeBinaryHeader(detailed)
	grpcOK := []string{":status", "200", "content-type", "application/grpc"}
	with := func(base []string, more ...string) []string { return append(append([]string(nil), base...), more...) }

	cases := []struct {
		name   string
		answer func(w *scriptWriter, id uint32)
		// limit is the gateway's message limit, timeout its longest call:
		// a caller's own deadline would race the gateway's answer to it.
		limit   int
		timeout time.Duration
	}{
		{name: "ok", answer: func(w *scriptWriter, id uint32) { w.ok(id, result) }},
		{name: "metadata", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, with(grpcOK, "x-answer", "one", "x-answer", "two", "x-blob-bin", "AQID")...)
			w.message(id, 0, result)
			w.headers(id, true, "grpc-status", "0", "x-after", "done", "x-after-bin", "AAEC")
		}},
		{name: "large response", answer: func(w *scriptWriter, id uint32) { w.ok(id, large) }},
		{name: "too large", limit: 64 << 10, answer: func(w *scriptWriter, id uint32) { w.ok(id, large) }},
		{name: "error with details", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, true, with(grpcOK, "grpc-status", "9", "grpc-message", "precondition%20failed", "grpc-status-details-bin", detailsBin, "x-why", "because")...)
		}},
		{name: "percent-encoded message", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, true, with(grpcOK, "grpc-status", "3", "grpc-message", "bad%20input%0Aline 2%2")...)
		}},
		{name: "details of another code", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, true, with(grpcOK, "grpc-status", "5", "grpc-message", "gone", "grpc-status-details-bin", detailsBin)...)
		}},
		{name: "error after headers", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, with(grpcOK, "x-early", "yes")...)
			w.headers(id, true, "grpc-status", "7", "grpc-message", "no", "x-late", "yes")
		}},
		{name: "transport-worded message", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, true, with(grpcOK, "grpc-status", "14", "grpc-message", "transport: is closing")...)
		}},
		{name: "no status", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.message(id, 0, result)
			w.headers(id, true, "x-trailer", "only")
		}},
		{name: "malformed status", answer: func(w *scriptWriter, id uint32) { w.headers(id, true, with(grpcOK, "grpc-status", "nine")...) }},
		{name: "no message", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "two messages", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.message(id, 0, result)
			w.message(id, 0, result)
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "cut message", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.raw(func(fr *http2.Framer) { _ = fr.WriteData(id, false, []byte{0, 0, 0, 0, 9, 1}) })
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "gzip message", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, with(grpcOK, "grpc-encoding", "gzip")...)
			w.message(id, 1, gzipped(t, result))
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "compressed without encoding", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.message(id, 1, gzipped(t, result))
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "no trailers", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, grpcOK...)
			w.message(id, 0, result)
			w.raw(func(fr *http2.Framer) { _ = fr.WriteData(id, true, nil) })
		}},
		{name: "HTTP 503", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, ":status", "503", "content-type", "text/plain")
			w.raw(func(fr *http2.Framer) { _ = fr.WriteData(id, true, []byte("overloaded")) })
		}},
		{name: "HTTP 404 trailers-only", answer: func(w *scriptWriter, id uint32) { w.headers(id, true, ":status", "404") }},
		{name: "HTML", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, ":status", "200", "content-type", "text/html")
			w.raw(func(fr *http2.Framer) { _ = fr.WriteData(id, true, []byte("<html>")) })
		}},
		{name: "informational first", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, ":status", "100")
			w.ok(id, result)
		}},
		{name: "malformed binary metadata", answer: func(w *scriptWriter, id uint32) {
			w.headers(id, false, with(grpcOK, "x-bad-bin", "!!!")...)
			w.message(id, 0, result)
			w.headers(id, true, "grpc-status", "0")
		}},
		{name: "reset", answer: func(w *scriptWriter, id uint32) {
			w.raw(func(fr *http2.Framer) { _ = fr.WriteRSTStream(id, http2.ErrCodeInternal) })
		}},
		{name: "reset cancel", answer: func(w *scriptWriter, id uint32) {
			w.raw(func(fr *http2.Framer) { _ = fr.WriteRSTStream(id, http2.ErrCodeCancel) })
		}},
		{name: "connection closed", answer: func(w *scriptWriter, _ uint32) { _ = w.conn.Close() }},
		{name: "silence", timeout: 300 * time.Millisecond, answer: func(*scriptWriter, uint32) {}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			upstream := startScripted(t, func(w *scriptWriter, id uint32, _ scriptedCall) { tc.answer(w, id) })
			cfg := Config{MaxTimeout: 5 * time.Second}
			if tc.timeout > 0 {
				cfg.MaxTimeout = tc.timeout
			}
			if tc.limit > 0 {
				cfg.Security.MaxBodyBytes = int64(tc.limit / transcodeBufferFactor)
			}
			own, grpcGo, taken := callBoth(t, upstream.ln.Addr().String(), cfg, "x")
			if taken != 1 {
				t.Fatalf("the gateway's own client made %d calls, want 1", taken)
			}
			if !reflect.DeepEqual(own, grpcGo) {
				t.Fatalf("callers saw\n own client: %+v\n grpc-go:    %+v", own, grpcGo)
			}
			t.Logf("%.300v", own)
		})
	}
}

// What the gateway's own client sends is what grpc-go's sends: the same
// path, deadline and metadata, and the same message.
func TestH2ClientSendsAsGRPCGo(t *testing.T) {
	t.Parallel()
	upstream := startScripted(t, func(w *scriptWriter, id uint32, _ scriptedCall) { w.ok(id, nil) })
	up := Upstream{Address: upstream.ln.Addr().String()}
	for _, viaGRPCGo := range []bool{false, true} {
		gw, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up, UpstreamGRPCGo: viaGRPCGo})
		if !viaGRPCGo {
			waitH2Ready(t, gw)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
		req := execute("sent")
		req.Header().Set("X-Request-Id", "same-id")
		req.Header().Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
		if _, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(ctx, req); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	calls := upstream.received()
	var sent []scriptedCall
	for _, c := range calls {
		if c.path != "/grpc.health.v1.Health/Check" {
			sent = append(sent, c)
		}
	}
	if len(sent) != 2 || !sent[0].ours || sent[1].ours {
		t.Fatalf("calls: %+v, want one by each client, own first", sent)
	}
	own, grpcGo := sent[0], sent[1]
	if own.path != grpcGo.path || !bytes.Equal(own.body, grpcGo.body) {
		t.Fatalf("own client sent %s %x, grpc-go %s %x", own.path, own.body, grpcGo.path, grpcGo.body)
	}
	// Both round the hour up to the same unit: "3600000m" or so.
	if own.timeout == "" || own.timeout[len(own.timeout)-1] != grpcGo.timeout[len(grpcGo.timeout)-1] {
		t.Fatalf("grpc-timeout: own %q, grpc-go %q", own.timeout, grpcGo.timeout)
	}
	for _, name := range []string{"x-request-id", "traceparent", "content-type", "te", ":authority", ":scheme", ":method"} {
		if !reflect.DeepEqual(own.header[name], grpcGo.header[name]) {
			t.Errorf("%s: own %q, grpc-go %q", name, own.header[name], grpcGo.header[name])
		}
	}
	for name := range grpcGo.header {
		if _, ok := own.header[name]; !ok && name != "grpc-accept-encoding" {
			t.Errorf("own client did not send %s", name)
		}
	}
	for name := range own.header {
		if _, ok := grpcGo.header[name]; !ok {
			t.Errorf("own client sent %s, which grpc-go does not", name)
		}
	}
}

// Calls the upstream never began are made again through grpc-go, which
// gets their answers: a stream refused, or one past a GOAWAY's last.
func TestH2ClientRetriesWhatTheUpstreamNeverBegan(t *testing.T) {
	t.Parallel()
	result, _ := proto.Marshal(nopResult)
	for _, how := range []string{"refused", "goaway"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			upstream := startScripted(t, func(w *scriptWriter, id uint32, call scriptedCall) {
				if !call.ours {
					w.ok(id, result)
					return
				}
				if how == "refused" {
					w.raw(func(fr *http2.Framer) { _ = fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
					return
				}
				// The first stream of the connection: none was begun.
				w.raw(func(fr *http2.Framer) { _ = fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
			})
			_, _, client := ownClientGateway(t, upstream.ln.Addr().String())
			res, err := client.ExecuteWorkflow(t.Context(), execute("x"))
			if err != nil {
				t.Fatal(err)
			}
			if res.Msg.GetResult().GetStatus() != "succeeded" {
				t.Fatalf("got %v", res.Msg)
			}
			var ours, theirs int
			for _, c := range upstream.received() {
				if c.path == "/grpc.health.v1.Health/Check" {
					continue
				}
				if c.ours {
					ours++
				} else {
					theirs++
				}
			}
			if ours != 1 || theirs != 1 {
				t.Fatalf("upstream got %d calls from the own client and %d from grpc-go, want 1 and 1", ours, theirs)
			}
		})
	}
}

// A caller that leaves takes its upstream call with it: the upstream is
// sent RST_STREAM(CANCEL), and the connection serves the next call.
func TestH2ClientCancels(t *testing.T) {
	t.Parallel()
	result := mustMarshal(t, nopResult)
	okBody := mustMarshal(t, execute("ok").Msg)
	upstream := startScripted(t, func(w *scriptWriter, id uint32, call scriptedCall) {
		if bytes.Equal(call.body[5:], okBody) {
			w.ok(id, result)
		}
	})
	gw, _, client := ownClientGateway(t, upstream.ln.Addr().String())
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err := client.ExecuteWorkflow(ctx, execute("hang"))
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	res, err := client.ExecuteWorkflow(t.Context(), execute("ok"))
	if err != nil || res.Msg.GetResult().GetStatus() != "succeeded" {
		t.Fatalf("next call: %v %v", res, err)
	}
	if got := h2Taken(gw); got != 2 {
		t.Fatalf("own client made %d calls, want 2", got)
	}
	upstream.mu.Lock()
	resets := upstream.resets
	upstream.mu.Unlock()
	if !reflect.DeepEqual(resets, []http2.ErrCode{http2.ErrCodeCancel}) {
		t.Fatalf("upstream got resets %v, want one CANCEL", resets)
	}
}

// A connection whose upstream has gone silent, calls in flight, is pinged
// and closed when the ping goes unanswered: its calls fail as Unavailable
// rather than wait out their deadlines.
func TestH2ClientKeepalive(t *testing.T) {
	t.Parallel()
	upstream := startScripted(t, func(*scriptWriter, uint32, scriptedCall) {})
	upstream.deaf.Store(true)
	c := &h2Client{
		addr: upstream.ln.Addr().String(), dialTimeout: time.Second, maxRecv: 1 << 20,
		conns: map[*h2Conn]struct{}{}, keepaliveTime: 100 * time.Millisecond, keepaliveTimeout: 100 * time.Millisecond,
	}
	t.Cleanup(c.close)
	c.redial()
	deadline := time.Now().Add(5 * time.Second)
	for c.cur.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.unary(ctx, "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", connect.NewRequest(&frame{data: []byte{}}))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "keepalive ping not answered") || time.Since(start) > 2*time.Second {
		t.Fatalf("after %v: %v, want Unavailable within about 300ms", time.Since(start), err)
	}
	if c.cur.Load() != nil {
		t.Fatal("the dead connection is still the client's")
	}
}

// nameEngine answers a call with its workflow's name, or holds a call
// named "hold" until it is canceled.
type nameEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
}

func (nameEngine) ExecuteWorkflow(ctx context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	name := req.Msg.GetWorkflowDefinition().GetName()
	if name == "hold" {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	res := connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{Status: name}})
	res.Header().Set("X-Echo", name)
	return res, nil
}

// Many callers at once, a third of them leaving mid-call: every answer
// reaches its own caller, and no call is left behind on the connection.
func TestH2ClientUnderLoad(t *testing.T) {
	t.Parallel()
	gw, _, client := ownClientGateway(t, nameBackend(t))
	var wg sync.WaitGroup
	errs := make(chan error, 64*20)
	for g := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if (g+i)%3 == 0 {
					// Canceled rather than timed out: no deadline goes
					// upstream, so only the client's reset ends the call there.
					ctx, cancel := context.WithCancel(t.Context())
					timer := time.AfterFunc(time.Duration(1+i%5)*time.Millisecond, cancel)
					_, err := client.ExecuteWorkflow(ctx, execute("hold"))
					timer.Stop()
					cancel()
					if code := connect.CodeOf(err); code != connect.CodeCanceled {
						errs <- fmt.Errorf("held call: %w", err)
					}
					continue
				}
				name := fmt.Sprintf("call-%d-%d", g, i)
				res, err := client.ExecuteWorkflow(t.Context(), execute(name))
				switch {
				case err != nil:
					errs <- err
				case res.Msg.GetResult().GetStatus() != name || res.Header().Get("X-Echo") != name:
					errs <- fmt.Errorf("call %s got %q and header %q", name, res.Msg.GetResult().GetStatus(), res.Header().Get("X-Echo"))
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if h2Taken(gw) < 64*20/2 {
		t.Fatalf("the own client sent %d of %d calls", h2Taken(gw), 64*20)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range gw.pools {
		for _, r := range *p.replicas.Load() {
			cc := r.h2.cur.Load()
			for cc != nil {
				cc.smu.Lock()
				left := len(cc.streams)
				cc.smu.Unlock()
				if left == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d calls left on the connection", left)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
}

// The metrics tell how many calls the own client sent and how many it
// left to grpc-go: a request larger than the upstream's windows (net/http's
// server, here, opens 1 MiB) is left.
func TestH2ClientMetrics(t *testing.T) {
	t.Parallel()
	_, url, client := ownClientGateway(t, nameBackend(t))
	for _, name := range []string{"a", "b", strings.Repeat("n", 3<<19)} {
		res, err := client.ExecuteWorkflow(t.Context(), execute(name))
		if err != nil || res.Msg.GetResult().GetStatus() != name {
			t.Fatalf("call %.10s: %v", name, err)
		}
	}
	f := scrape(t, url)
	engine := map[string]string{"upstream": "engine"}
	if got := value(f, "flowgate_upstream_own_client_calls_total", engine); got != 2 {
		t.Errorf("own client calls = %v, want 2", got)
	}
	if got := value(f, "flowgate_upstream_grpc_go_calls_total", engine); got != 1 {
		t.Errorf("calls left to grpc-go = %v, want 1 (the large one)", got)
	}
}
