package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// freezer is a TCP proxy in front of a backend that can stop passing bytes
// both ways without closing anything, as a stopped (SIGSTOP) or hung
// backend process behaves.
type freezer struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	thawed *sync.Cond
}

func startFreezer(tb testing.TB, target string) *freezer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &freezer{ln: ln, target: target}
	f.thawed = sync.NewCond(&f.mu)
	var conns sync.WaitGroup
	tb.Cleanup(func() {
		f.set(false)
		_ = ln.Close()
		conns.Wait()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			conns.Add(2)
			go func() { defer conns.Done(); f.pipe(up, c) }()
			go func() { defer conns.Done(); f.pipe(c, up) }()
		}
	}()
	return f
}

func (f *freezer) set(frozen bool) {
	f.mu.Lock()
	f.frozen = frozen
	f.mu.Unlock()
	f.thawed.Broadcast()
}

// pipe copies src to dst, holding each chunk while the proxy is frozen.
func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.thawed.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

// A backend that stops answering while keeping its connection is ejected
// within seconds: new calls fail at once with Unavailable and a retry hint
// instead of waiting for their deadlines, and calls resume when it answers
// a probe again.
func TestHungUpstreamEjected(t *testing.T) {
	t.Parallel()
	engine := &hangingEngine{started: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(engine))
	backend := startH2C(t, mux)
	proxy := startFreezer(t, backend.Listener.Addr().String())
	up := Upstream{Address: proxy.ln.Addr().String()}
	_, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up, MaxTimeout: time.Minute})
	client := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()})
	if _, err := client.ExecuteWorkflow(t.Context(), execute("ok")); err != nil {
		t.Fatalf("warm-up call: %v", err)
	}

	proxy.set(true)
	// Calls that were sent before anyone could know wait; one is enough to
	// make the gateway look.
	waiting := make(chan error, 1)
	go func() {
		_, err := client.ExecuteWorkflow(t.Context(), execute("ok"))
		waiting <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		start := time.Now()
		ctx, cancel := contextWithTimeout(t, 300*time.Millisecond)
		_, err = client.ExecuteWorkflow(ctx, execute("ok"))
		cancel()
		if connect.CodeOf(err) == connect.CodeUnavailable && time.Since(start) < 200*time.Millisecond {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Message() != "workflow engine is not answering; retry shortly" {
		t.Fatalf("no fast failure while the upstream hangs: %v", err)
	}
	if !hasRetryInfo(ce) {
		t.Errorf("no RetryInfo detail: %v", ce.Details())
	}
	// REST callers get 503 with Retry-After: the call was not sent.
	res := doREST(t, http.MethodPost, url+"/api/v1/workflow/execute", strings.NewReader(`{"workflow_definition":{"name":"ok"}}`), nil)
	if res.status != http.StatusServiceUnavailable || res.code != "SERVICE_UNAVAILABLE" || res.header.Get("Retry-After") != "1" ||
		!strings.Contains(string(res.body), "workflow engine is not answering; retry shortly") {
		t.Errorf("REST while ejected: %d %s %q", res.status, res.body, res.header.Get("Retry-After"))
	}

	proxy.set(false)
	<-waiting
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err = client.ExecuteWorkflow(t.Context(), execute("ok")); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("calls did not resume: %v", err)
}

func hasRetryInfo(ce *connect.Error) bool {
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if _, ok := v.(*errdetails.RetryInfo); ok {
				return true
			}
		}
	}
	return false
}

// Calls over the in-flight limit of an upstream fail at once.
func TestUpstreamInFlightLimit(t *testing.T) {
	t.Parallel()
	engine := &hangingEngine{started: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(engine))
	backend := startH2C(t, mux)
	up := Upstream{Address: backend.Listener.Addr().String()}
	_, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up, MaxInFlight: 2})
	client := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()})
	ctx, cancel := contextWithTimeout(t, time.Minute)
	defer cancel()
	var done atomic.Int32
	for range 2 {
		go func() {
			_, _ = client.ExecuteWorkflow(ctx, execute("hold"))
			done.Add(1)
		}()
		<-engine.started
	}
	start := time.Now()
	_, err := client.ExecuteWorkflow(t.Context(), execute("hold"))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || ce.Message() != "workflow engine has too many calls in flight; retry shortly" {
		t.Fatalf("third call: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("refusal took %v", time.Since(start))
	}
	if done.Load() != 0 {
		t.Errorf("held calls ended early")
	}
}

func contextWithTimeout(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	t.Helper()
	return context.WithTimeout(t.Context(), d)
}

// An upstream that refuses connections is down, not hung: its calls fail
// fast with 502 by themselves, however long the gateway watches it, and
// it is never ejected into 503s.
func TestRefusedUpstreamNotEjected(t *testing.T) {
	t.Parallel()
	up := Upstream{Address: deadAddress(t)}
	_, url := startGateway(t, Config{Engine: up, Agent: up, Runtime: up})
	// Several callers at once, so that calls are in flight whenever the
	// gateway looks.
	deadline := time.Now().Add(stallAfter + 2*probeInterval + probeTimeout)
	client := http1Client(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				res, err := client.Post(url+"/api/v1/workflow/execute", "application/json", strings.NewReader(`{}`))
				if err != nil {
					t.Error(err)
					return
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "workflow engine is unavailable") {
					t.Errorf("got %d %s, want 502 workflow engine is unavailable", res.StatusCode, body)
					return
				}
			}
		})
	}
	wg.Wait()
}
