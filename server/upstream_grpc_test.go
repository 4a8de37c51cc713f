package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// hangingEngine holds every call until its backend goes away; a call named
// "cancel" is canceled by the backend, as a backend shutting down cancels
// the calls it still has, and one named "ok" succeeds at once.
type hangingEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
	started chan struct{}
}

func (e *hangingEngine) ExecuteWorkflow(ctx context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	switch req.Msg.GetWorkflowDefinition().GetName() {
	case "cancel":
		return nil, connect.NewError(connect.CodeCanceled, context.Canceled)
	case "ok":
		return connect.NewResponse(nopResult), nil
	}
	e.started <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// A call in flight when its backend dies is the upstream's failure, not the
// caller's cancellation: callers that are still there get Unavailable (502
// over REST), which tells them a retry may succeed.
func TestBackendDiesDuringCall(t *testing.T) {
	t.Parallel()
	for _, caller := range []string{"grpc", "connect", "rest", "grpc/cancel", "rest/cancel"} {
		t.Run(caller, func(t *testing.T) {
			t.Parallel()
			engine := &hangingEngine{started: make(chan struct{}, 1)}
			mux := http.NewServeMux()
			mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(engine))
			backend := startH2C(t, mux)
			up := Upstream{Address: backend.Listener.Addr().String()}
			_, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up, MaxTimeout: 30 * time.Second})
			go func() {
				<-engine.started
				backend.CloseClientConnections()
			}()
			name := "any"
			if strings.HasSuffix(caller, "/cancel") {
				name = "cancel"
			}
			if strings.HasPrefix(caller, "rest") {
				res := doREST(t, http.MethodPost, url+"/api/v1/workflow/execute", strings.NewReader(`{"workflow_definition":{"name":"`+name+`"}}`), nil)
				var body struct {
					Error struct{ Message string } `json:"error"`
				}
				_ = json.Unmarshal(res.body, &body)
				if res.status != http.StatusBadGateway || res.code != "BAD_GATEWAY" || body.Error.Message != "workflow engine is unavailable" {
					t.Fatalf("got %d %s, want 502 BAD_GATEWAY %q", res.status, res.body, "workflow engine is unavailable")
				}
				return
			}
			var opts []connect.ClientOption
			if strings.HasPrefix(caller, "grpc") {
				opts = append(opts, connect.WithGRPC())
			}
			_, err := engineClient(t, url, opts).ExecuteWorkflow(t.Context(), execute(name))
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Message() != "workflow engine is unavailable" {
				t.Fatalf("err = %v, want unavailable: workflow engine is unavailable", err)
			}
		})
	}
}

// floodAgent sends 16 KiB chat messages as fast as its caller takes them and
// counts the bytes sent.
type floodAgent struct {
	agentv1connect.UnimplementedWorkflowAgentServiceHandler
	sent atomic.Int64
}

func (a *floodAgent) Chat(ctx context.Context, _ *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	msg := &agentv1.ChatResponse{Type: "message", Content: strings.Repeat("x", 16<<10)}
	for ctx.Err() == nil {
		if err := stream.Send(msg); err != nil {
			return err
		}
		a.sent.Add(16 << 10)
	}
	return ctx.Err()
}

// A server stream whose caller reads nothing holds a bounded amount in the
// gateway: the upstream stops once the per-stream receive window is full,
// instead of pushing megabytes into the gateway's memory.
func TestUnreadStreamBoundsUpstream(t *testing.T) {
	t.Parallel()
	agent := &floodAgent{}
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewWorkflowAgentServiceHandler(agent))
	up := Upstream{Address: startH2C(t, mux).Listener.Addr().String()}
	_, url := startGateway(t, Config{Agent: up, Engine: up, Runtime: up})

	// The caller's own receive buffer is small too, so that what the backend
	// manages to send is what the gateway holds plus a little.
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols, HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 64 << 10, MaxReceiveBufferPerConnection: 64 << 10}}
	t.Cleanup(tr.CloseIdleConnections)
	client := agentv1connect.NewWorkflowAgentServiceClient(&http.Client{Transport: tr}, url, connect.WithGRPC())
	stream, err := client.Chat(t.Context(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "hi"}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() {
		t.Fatalf("no first message: %v", stream.Err())
	}
	// Wait until the backend stalls: no progress for half a second.
	last := agent.sent.Load()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		now := agent.sent.Load()
		if now == last {
			break
		}
		last = now
	}
	// 64 KiB in the caller, 64 KiB upstream window, the gateway's and the
	// backend's write buffers; net/http's client would take 4 MiB upstream.
	if limit := int64(1 << 20); last > limit {
		t.Fatalf("backend sent %d KiB to a caller that reads nothing; want under %d KiB", last>>10, limit>>10)
	}
	t.Logf("backend stalled after %d KiB", last>>10)
}

// Binary metadata crosses the gateway both ways.
func TestBinaryHeadersForwarded(t *testing.T) {
	t.Parallel()
	var seen atomic.Value
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(binEngine{seen: &seen}))
	up := Upstream{Address: startH2C(t, mux).Listener.Addr().String()}
	_, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up, ForwardHeaders: []string{"X-Trace-Bin"}})
	req := execute("bin")
	req.Header().Set("X-Trace-Bin", connect.EncodeBinaryHeader([]byte{0, 1, 2, 255}))
	res, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := seen.Load().([]byte); string(got) != "\x00\x01\x02\xff" {
		t.Errorf("backend saw %q", got)
	}
	got, err := connect.DecodeBinaryHeader(res.Header().Get("X-Reply-Bin"))
	if err != nil || string(got) != "\xfe\x00" {
		t.Errorf("reply header %q (%v)", res.Header().Get("X-Reply-Bin"), err)
	}
}

type binEngine struct {
	enginev1connect.UnimplementedWorkflowEngineServiceHandler
	seen *atomic.Value
}

func (e binEngine) ExecuteWorkflow(_ context.Context, req *connect.Request[enginev1.ExecuteWorkflowRequest]) (*connect.Response[enginev1.ExecuteWorkflowResponse], error) {
	raw, _ := connect.DecodeBinaryHeader(req.Header().Get("X-Trace-Bin"))
	e.seen.Store(raw)
	res := connect.NewResponse(nopResult)
	res.Header().Set("X-Reply-Bin", connect.EncodeBinaryHeader([]byte{254, 0}))
	return res, nil
}

// Messages of a mebibyte pass in both directions over every caller protocol.
func TestLargeMessages(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	name := strings.Repeat("n", 1<<20)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			res, err := engineClient(t, url, p.opts).ExecuteWorkflow(t.Context(), execute(name))
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Msg.GetResult().GetOutput().GetStringValue(); got != name {
				t.Errorf("output of %d bytes, want %d", len(got), len(name))
			}
		})
	}
	t.Run("rest", func(t *testing.T) {
		t.Parallel()
		body, _ := json.Marshal(map[string]any{"workflow_definition": map[string]any{"name": name}})
		res, err := http1Client(t).Post(url+"/api/v1/workflow/execute", "application/json", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		// The REST response body is the result itself.
		var out struct {
			Output string `json:"output"`
		}
		data, _ := io.ReadAll(res.Body)
		if err := json.Unmarshal(data, &out); err != nil || out.Output != name {
			t.Fatalf("status %d, output of %d bytes (%v)", res.StatusCode, len(out.Output), err)
		}
	})
}

// A forwarded header whose value gRPC metadata cannot carry is the caller's
// mistake, said in plain words.
func TestNonASCIIForwardedHeader(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	res := doREST(t, http.MethodPost, url+"/api/v1/workflow/execute", strings.NewReader(`{}`), http.Header{"Idempotency-Key": {"caf\u00e9"}})
	if res.status != http.StatusBadRequest || !strings.Contains(string(res.body), "header Idempotency-Key: value must be printable ASCII") {
		t.Errorf("got %d %s", res.status, res.body)
	}
}

// TestPrintableASCII holds the word-at-a-time check to the byte-by-byte
// rule: every byte value at every position of strings up to three words
// long, in a background of printable bytes at both ends of the range.
func TestPrintableASCII(t *testing.T) {
	byByte := func(v string) bool {
		for i := range len(v) {
			if v[i] < 0x20 || v[i] > 0x7e {
				return false
			}
		}
		return true
	}
	for _, fill := range []byte{0x20, 0x7e, 'a'} {
		for n := range 25 {
			for pos := range n {
				for c := range 256 {
					b := []byte(strings.Repeat(string(fill), n))
					b[pos] = byte(c)
					if got, want := printableASCII(string(b)), byByte(string(b)); got != want {
						t.Fatalf("printableASCII(%q) = %v, want %v", b, got, want)
					}
				}
			}
		}
	}
}
