package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// holdAgent's Chat sends "hello", holds the stream open for the duration
// in user_message (until the caller leaves when there is none), then sends
// "bye": a healthy stream that is idle in between.
type holdAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
}

func (holdAgent) Chat(ctx context.Context, req *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	if err := stream.Send(&agentv1.ChatResponse{Type: "message", Content: "hello"}); err != nil {
		return err
	}
	hold := time.Hour
	if d, err := time.ParseDuration(req.Msg.GetUserMessage()); err == nil {
		hold = d
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(hold):
	}
	return stream.Send(&agentv1.ChatResponse{Type: "message", Content: "bye"})
}

// bigEngine answers ExecuteWorkflow with an output as long as the trigger
// data's size field asks.
type bigEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
}

func (bigEngine) ExecuteWorkflow(_ context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	size := int(req.Msg.GetTriggerData().GetFields()["size"].GetNumberValue())
	return connect.NewResponse(&enginev1.ExecuteWorkflowResponse{Result: &enginev1.ExecutionResult{
		Status: "succeeded", Output: structpb.NewStringValue(strings.Repeat("x", size)),
	}}), nil
}

// startLimitGateway serves a gateway with authentication on in front of
// holdAgent and bigEngine.
func startLimitGateway(t *testing.T, tweak func(*SecurityConfig)) string {
	t.Helper()
	serve := func(path string, h http.Handler) Upstream {
		mux := http.NewServeMux()
		mux.Handle(path, h)
		return Upstream{Address: startH2C(t, mux).Listener.Addr().String()}
	}
	sec, _ := secConfig(t)
	if tweak != nil {
		tweak(&sec)
	}
	_, url := startGateway(t, Config{
		Agent:      serve(agentv1connect.NewWorkflowAgentServiceHandler(holdAgent{})),
		Engine:     serve(enginev1connect.NewWorkflowEngineServiceHandler(bigEngine{})),
		Runtime:    serve(runtimev1connect.NewWorkflowRuntimeServiceHandler(runtimev1connect.UnimplementedWorkflowRuntimeServiceHandler{})),
		MaxTimeout: time.Minute,
		Security:   sec,
	})
	return url
}

// rawExchange writes request on a new connection, stops sending (the body
// never completes) and reads the response.
func rawExchange(t *testing.T, url, request string) (*http.Response, []byte, time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no response to a stalled body: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res, body, time.Since(start)
}

// TestSlowRequestBodyTimedOut: a caller that starts a body and stops
// sending is answered with a timeout error once the body read timeout has
// passed, before authentication (it sends no credentials), in its
// protocol's shape.
func TestSlowRequestBodyTimedOut(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	url := startLimitGateway(t, func(c *SecurityConfig) { c.BodyReadTimeout = timeout })
	wantMsg := "request body not received within 300ms"
	for _, tc := range []struct {
		name, request string
		status        int
		code          string
	}{
		{"rest", "POST /api/v1/workflow/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"workflow",
			http.StatusRequestTimeout, "REQUEST_TIMEOUT"},
		{"rest chunked", "POST /api/v1/workflow/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"wor\r\n",
			http.StatusRequestTimeout, "REQUEST_TIMEOUT"},
		{"connect", "POST " + executePath + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nContent-Length: 100\r\n\r\n{\"workflow",
			http.StatusGatewayTimeout, "deadline_exceeded"}, // Connect's own status for the code
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res, body, elapsed := rawExchange(t, url, tc.request)
			var e struct {
				Error         struct{ Code, Message string }
				Code, Message string
			}
			_ = json.Unmarshal(body, &e)
			if res.StatusCode != tc.status || e.Error.Code+e.Code != tc.code || e.Error.Message+e.Message != wantMsg {
				t.Errorf("got %d %s, want %d %s %q", res.StatusCode, body, tc.status, tc.code, wantMsg)
			}
			if elapsed > 3*time.Second {
				t.Errorf("answered after %v", elapsed)
			}
		})
	}
	t.Run("grpc", func(t *testing.T) {
		t.Parallel()
		pr, pw := io.Pipe()
		defer pw.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+executePath, pr)
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		req.Header.Set("Authorization", "Bearer "+hsToken(t, nil))
		go func() { _, _ = pw.Write([]byte{0, 0, 0, 0, 100, 10, 3}) }() // promises 100 bytes, sends 2
		start := time.Now()
		// A gRPC caller's connection is grpc-go's, which gives a call no way
		// to reset its own stream: the stalled caller's connection is cut.
		res, err := h2cClient(t).Do(req)
		if err == nil {
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
		}
		if err == nil && res.Trailer.Get("Grpc-Status") == "0" {
			t.Errorf("a call whose body never came succeeded")
		}
		if elapsed := time.Since(start); elapsed > 3*time.Second {
			t.Errorf("answered after %v", elapsed)
		}
	})
}

// TestIdleStreamsOutliveTimeouts: a server stream that sends, idles for
// longer than both the body read and the write timeouts, and sends again,
// reaches its caller whole on every protocol.
func TestIdleStreamsOutliveTimeouts(t *testing.T) {
	t.Parallel()
	url := startLimitGateway(t, func(c *SecurityConfig) {
		c.BodyReadTimeout = 200 * time.Millisecond
		c.WriteTimeout = 200 * time.Millisecond
	})
	auth := "Bearer " + hsToken(t, nil)
	for _, p := range secProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			httpClient := h2cClient(t)
			if p.http1 {
				httpClient = http1Client(t)
			}
			client := agentv1connect.NewWorkflowAgentServiceClient(httpClient, url, p.opts...)
			req := connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "1s"})
			req.Header().Set("Authorization", auth)
			stream, err := client.Chat(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for stream.Receive() {
				got = append(got, stream.Msg().GetContent())
			}
			if strings.Join(got, ",") != "hello,bye" || stream.Err() != nil {
				t.Errorf("got %v, %v; want hello and bye", got, stream.Err())
			}
		})
	}
	t.Run("sse", func(t *testing.T) {
		t.Parallel()
		res := sseGet(t, http1Client(t), url+"/api/v1/chat/stream?session_id=s&user_message=1s", http.Header{"Authorization": {auth}})
		events := readSSE(t, res.Body, nil)
		var got []string
		for _, ev := range events {
			got = append(got, fmt.Sprint(ev.data["content"]))
		}
		if strings.Join(got, ",") != "hello,bye,<nil>" && strings.Join(got, ",") != "hello,bye" {
			t.Errorf("got events %v, want hello and bye", got)
		}
	})
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// smallWindowDial connects with a tiny receive buffer, so that a caller
// that does not read stops the gateway's writes quickly.
func smallWindowDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) //nolint:gosec // a socket descriptor
		})
		return err
	}}
	conn, err := d.DialContext(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestStalledReadersReleaseMemory: callers that stop reading large
// responses have their calls ended once a write makes no progress for the
// write timeout, so the responses they pinned are released instead of
// held for as long as the callers like. Not parallel: it measures the
// heap of this process, where the gateway runs.
func TestStalledReadersReleaseMemory(t *testing.T) {
	const size, readers = 6 << 20, 6
	url := startLimitGateway(t, func(c *SecurityConfig) {
		c.WriteTimeout = 300 * time.Millisecond
		c.MaxBodyBytes = 4 << 20
	})
	body := fmt.Sprintf(`{"workflow_definition":{"name":"big"},"trigger_data":{"size":%d}}`, size)
	request := fmt.Sprintf("POST /api/v1/workflow/execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", hsToken(t, nil), len(body), body)
	before := heapInUse()
	conns := make([]net.Conn, readers)
	for i := range conns {
		conns[i] = smallWindowDial(t, strings.TrimPrefix(url, "http://"))
		if _, err := io.WriteString(conns[i], request); err != nil {
			t.Fatal(err)
		}
	}
	// Read nothing. Building the responses takes a while under the race
	// detector; once they are written as far as the callers let them, the
	// write timeout must free them.
	// First wait for the responses to be built and pinned, so that a slow
	// machine is not taken for a released heap.
	peak := heapInUse()
	for deadline := time.Now().Add(15 * time.Second); peak <= before+size && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		peak = max(peak, heapInUse())
	}
	after := heapInUse()
	for deadline := time.Now().Add(15 * time.Second); after > before+size && time.Now().Before(deadline); after = heapInUse() {
		peak = max(peak, after)
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("heap in use: %d MiB before %d stalled readers of %d MiB, %d MiB at the peak, %d MiB after",
		before>>20, readers, size>>20, peak>>20, after>>20)
	if after > before+size {
		t.Errorf("the heap grew by %d MiB and stayed: the stalled responses are still held", (after-before)>>20)
	}
	for _, conn := range conns {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("the gateway kept a stalled connection open (read %d bytes)", n)
		} else if n >= size {
			t.Errorf("a caller got all %d bytes after stalling: the write was never cut", n)
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestStalledGRPCReaderCut: a gRPC caller that stops reading a large
// response has its stream reset once the gateway's write makes no progress
// for the write timeout, rather than held open.
func TestStalledGRPCReaderCut(t *testing.T) {
	t.Parallel()
	const size = 12 << 20 // past what the client's HTTP/2 windows take in unread
	url := startLimitGateway(t, func(c *SecurityConfig) {
		c.WriteTimeout = 300 * time.Millisecond
		c.MaxBodyBytes = 4 << 20
	})
	msg := executeRequest("big", false)
	msg.TriggerData, _ = structpb.NewStruct(map[string]any{"size": size})
	req, _ := http.NewRequestWithContext(ctxTimeout(t, 30*time.Second), http.MethodPost, url+executePath,
		strings.NewReader(string(envelope(mustMarshal(t, msg), false))))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Authorization", "Bearer "+hsToken(t, nil))
	res, err := h2cClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	time.Sleep(1500 * time.Millisecond) // read nothing
	n, err := io.Copy(io.Discard, res.Body)
	if err == nil && res.Trailer.Get("Grpc-Status") == "0" {
		t.Errorf("the caller got the whole response (%d bytes) after stalling: the write was never cut", n)
	}
	if n >= size {
		t.Errorf("the caller read %d bytes after stalling, want the stream cut short", n)
	}
}

// TestConnectionCapPerIP: connections over the per-address cap are closed
// at once; under it they are served, and a closed one frees its place.
func TestConnectionCapPerIP(t *testing.T) {
	t.Parallel()
	url := startLimitGateway(t, func(c *SecurityConfig) { c.MaxConnsPerIP = 2 })
	addr := strings.TrimPrefix(url, "http://")
	// health asks for /health on a new connection, left open.
	health := func() (net.Conn, error) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return conn, err
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return conn, err
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			return conn, fmt.Errorf("status %d", res.StatusCode)
		}
		return conn, nil
	}
	first, err := health()
	if err != nil {
		t.Fatalf("connection under the cap: %v", err)
	}
	if _, err := health(); err != nil {
		t.Fatalf("connection under the cap: %v", err)
	}
	if _, err := health(); err == nil {
		t.Error("a third connection from one address was served with a cap of two")
	}
	first.Close()
	time.Sleep(100 * time.Millisecond) // the gateway sees the close
	if _, err := health(); err != nil {
		t.Errorf("a connection after one closed: %v", err)
	}
}

// TestConnectionCapAnswers: a connection over the cap is answered in its
// request's protocol, not reset: REST gets the contract's 429 with
// Retry-After, an SSE stream an error event that EventSource retries,
// Connect and gRPC-Web callers (text mode too) ResourceExhausted, and an
// HTTP/2 caller a GOAWAY that lets it retry; each is counted.
func TestConnectionCapAnswers(t *testing.T) {
	t.Parallel()
	url := startLimitGateway(t, func(c *SecurityConfig) { c.MaxConnsPerIP = 1 })
	held, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = held.Close() })
	_ = held.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(held, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if res, err := http.ReadResponse(bufio.NewReader(held), nil); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("the connection under the cap: %v", err)
	}
	const wantMsg = "too many open connections from this address (limit 1)"
	// refused sends a request on a new connection, which the cap refuses.
	refused := func(t *testing.T, method, path, body string, header http.Header) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = header
		res, err := http1Client(t).Do(req)
		if err != nil {
			t.Fatalf("refused connection not answered: %v", err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}

	t.Run("rest", func(t *testing.T) {
		// From a page of an allowed origin, which must be able to read it.
		res := refused(t, http.MethodPost, "/api/v1/session", `{"action":"create"}`,
			http.Header{"Content-Type": {"application/json"}, "Origin": {"http://localhost:3000"}, "X-Request-Id": {"cap-1"}})
		var body struct {
			Error struct {
				Code, Message string
				Details       map[string]any
			}
		}
		if err := json.NewDecoder(res.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusTooManyRequests || body.Error.Code != "RATE_LIMITED" ||
			!strings.Contains(body.Error.Message, wantMsg) || body.Error.Details["retry_after_seconds"] != 1.0 {
			t.Errorf("got %d %+v, want 429 RATE_LIMITED %q, retry after 1 s", res.StatusCode, body.Error, wantMsg)
		}
		if res.Header.Get("Retry-After") != "1" || !res.Close || res.Header.Get("Content-Type") != "application/json" ||
			res.Header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" || res.Header.Get("X-Request-Id") != "cap-1" {
			t.Errorf("headers %v (close %v), want Retry-After 1, JSON, CORS for the page, the caller's request id, the connection closed", res.Header, res.Close)
		}
	})
	t.Run("preflight", func(t *testing.T) {
		res := refused(t, http.MethodOptions, "/api/v1/session", "", http.Header{"Origin": {"http://localhost:3000"},
			"Access-Control-Request-Method": {"POST"}, "Access-Control-Request-Headers": {"content-type"}})
		if res.StatusCode != http.StatusNoContent || res.Header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" ||
			res.Header.Get("Content-Length") != "" {
			t.Errorf("preflight got %d %v, want the gateway's 204 with CORS and no body", res.StatusCode, res.Header)
		}
	})
	t.Run("sse", func(t *testing.T) {
		// EventSource stops for good on any status but 200: the refusal
		// is an error event on a stream, with retry advice.
		res := refused(t, http.MethodGet, "/api/v1/chat/stream?session_id=s&user_message=hi", "",
			http.Header{"Accept": {"text/event-stream"}})
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") ||
			!strings.Contains(string(body), "retry: ") || !strings.Contains(string(body), "event: error\ndata: {\"error\":{\"code\":\"RATE_LIMITED\"") ||
			!strings.Contains(string(body), wantMsg) || !validRequestID(res.Header.Get("X-Request-Id")) {
			t.Errorf("got %d %v %q, want a 200 event stream with a request id, retry advice and a RATE_LIMITED error event", res.StatusCode, res.Header, body)
		}
	})
	t.Run("unparsable", func(t *testing.T) {
		conn, br := dialH1(t, url)
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "NOT HTTP\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("refused connection not answered: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), `"code":"RATE_LIMITED"`) ||
			!validRequestID(res.Header.Get("X-Request-Id")) {
			t.Errorf("got %d %v %s, want the contract's 429 with a request id", res.StatusCode, res.Header, body)
		}
	})
	t.Run("grpc-web-text", func(t *testing.T) {
		// Google's grpc-web client's default mode; an empty message.
		res := refused(t, http.MethodPost, "/workflow.agent.v1.WorkflowAgentService/CreateSession", "AAAAAAA=",
			http.Header{"Content-Type": {"application/grpc-web-text"}, "X-Grpc-Web": {"1"}})
		if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/grpc-web-text+proto" ||
			res.Header.Get("Grpc-Status") != "8" || !strings.Contains(res.Header.Get("Grpc-Message"), wantMsg) {
			t.Errorf("got %d %v, want a text-mode ResourceExhausted %q", res.StatusCode, res.Header, wantMsg)
		}
	})
	req := &enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: "w"}}
	for name, opts := range map[string][]connect.ClientOption{
		"connect":  nil,
		"grpc-web": {connect.WithGRPCWeb()},
	} {
		t.Run(name, func(t *testing.T) {
			client := enginev1connect.NewWorkflowEngineServiceClient(http1Client(t), url, opts...)
			_, err := client.ExecuteWorkflow(context.Background(), connect.NewRequest(req))
			if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), wantMsg) {
				t.Errorf("got %v, want ResourceExhausted %q", err, wantMsg)
			}
		})
	}
	t.Run("grpc", func(t *testing.T) {
		// net/http's client does not show a GOAWAY's text: read the frames.
		fr := dialH2(t, url)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("no GOAWAY before %v", err)
			}
			if ga, ok := f.(*http2.GoAwayFrame); ok {
				if ga.LastStreamID != 0 || ga.ErrCode != http2.ErrCodeEnhanceYourCalm || !strings.Contains(string(ga.DebugData()), wantMsg) {
					t.Errorf("GOAWAY last stream %d, %v, %q; want 0, ENHANCE_YOUR_CALM, %q", ga.LastStreamID, ga.ErrCode, ga.DebugData(), wantMsg)
				}
				break
			}
		}
	})
	// Once the held connection's place is freed, the count is read on a
	// new one.
	_ = held.Close()
	var families map[string]*dto.MetricFamily
	for deadline := time.Now().Add(5 * time.Second); families == nil; time.Sleep(20 * time.Millisecond) {
		families, _ = fetchMetrics(t, url)
		if families == nil && time.Now().After(deadline) {
			t.Fatal("the place of the closed connection was not freed")
		}
	}
	if v := value(families, "flowgate_rate_limit_refusals_total", map[string]string{"reason": "conn_limit"}); v < 6 {
		t.Errorf("conn_limit refusals counted %v, want at least the six answered", v)
	}
}

// TestStreamCapPerCaller: one identity may hold only so many server
// streams (SSE included) at once; another identity is not affected, and a
// closed stream frees its place.
func TestStreamCapPerCaller(t *testing.T) {
	t.Parallel()
	url := startLimitGateway(t, func(c *SecurityConfig) { c.MaxStreamsPerCaller = 2 })
	client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, connect.WithGRPC())
	open := func(t *testing.T, ctx context.Context, subject string) error {
		t.Helper()
		req := connect.NewRequest(&agentv1.ChatRequest{SessionId: "s"})
		req.Header().Set("Authorization", "Bearer "+hsToken(t, map[string]any{"sub": subject}))
		stream, err := client.Chat(ctx, req)
		if err != nil {
			return err
		}
		if !stream.Receive() {
			return stream.Err()
		}
		return nil
	}
	first, cancelFirst := context.WithCancel(t.Context())
	defer cancelFirst()
	if err := open(t, first, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := open(t, t.Context(), "alice"); err != nil {
		t.Fatal(err)
	}
	wantMsg := "too many open streams for this caller (limit 2)"
	err := open(t, ctxTimeout(t, 5*time.Second), "alice")
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), wantMsg) {
		t.Errorf("third stream: %v, want resource_exhausted %q", err, wantMsg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	sseReq, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/v1/chat/stream?session_id=s&user_message=x", nil)
	sseReq.Header.Set("Authorization", "Bearer "+hsToken(t, map[string]any{"sub": "alice"}))
	res, err := http1Client(t).Do(sseReq)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(data), `"RATE_LIMITED"`) || !strings.Contains(string(data), wantMsg) {
		t.Errorf("SSE stream over the cap: %d %s", res.StatusCode, data)
	}
	if err := open(t, t.Context(), "bob"); err != nil {
		t.Errorf("another caller: %v", err)
	}
	cancelFirst()
	time.Sleep(200 * time.Millisecond) // the gateway sees the stream end
	if err := open(t, t.Context(), "alice"); err != nil {
		t.Errorf("after one stream closed: %v", err)
	}
}
