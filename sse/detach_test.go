package sse

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/dynamicpb"
)

func TestHandlerSeesTheCall(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		md := tickMethod(t)
		type seen struct {
			spec   connect.Spec
			peer   connect.Peer
			header http.Header
		}
		calls := make(chan seen, 1)
		b, err := New(Config{Procedure: tickProcedure, Handler: func(_ context.Context, conn connect.StreamingHandlerConn) error {
			calls <- seen{conn.Spec(), conn.Peer(), conn.RequestHeader().Clone()}
			if err := conn.Receive(dynamicpb.NewMessage(md.Input())); err != nil {
				return err
			}
			conn.ResponseHeader().Set("X-Upstream", "not for browsers")
			return conn.Send(dynamicpb.NewMessage(md.Output()))
		}})
		if err != nil {
			t.Fatal(err)
		}
		srv := serve(t, b, 0)
		resp := get(t, srv.URL+"?session_id=s", http.Header{
			"Authorization": {"Bearer t"}, "Accept": {"text/event-stream"}, "Cache-Control": {"no-cache"}, "X-Request-Id": {"r1"},
		})
		if data := dataEvents(readEvents(t, resp.Body, nil)); len(data) != 1 || resp.Header.Get("X-Upstream") != "" {
			t.Errorf("events %+v, header %v", data, resp.Header)
		}
		var c seen
		select {
		case c = <-calls:
		default:
			t.Fatal("the handler was not called")
		}
		if c.spec.Procedure != tickProcedure || c.spec.StreamType != connect.StreamTypeServer || c.spec.Schema == nil || c.spec.IsClient {
			t.Errorf("spec %+v", c.spec)
		}
		if c.peer.Protocol != Protocol || c.peer.Addr == "" {
			t.Errorf("peer %+v", c.peer)
		}
		if c.header.Get("Authorization") != "Bearer t" || c.header.Get("X-Request-Id") != "r1" ||
			c.header.Get("Accept") != "" || c.header.Get("Cache-Control") != "" {
			t.Errorf("request header %v: want the credentials and request id only", c.header)
		}
	})
}

// A handler that never ends is cut when Shutdown's context ends; the
// browser's connection is closed rather than left open.
func TestShutdownCutsStreamsThatOutstayIt(t *testing.T) {
	t.Parallel()
	ts, srv, b := newBridge(t, Config{})
	resp := do(t, newClient(t, "http1"), srv.URL+"?session_id=s&count=1&block=true", nil)
	readEvents(t, resp.Body, func(e event) bool { return e.name == "" })
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	err := b.Shutdown(ctx)
	var cut *CutError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &cut) || cut.Streams != 1 {
		t.Errorf("Shutdown = %v, want the deadline and one stream cut", err)
	}
	select {
	case <-ts.cancelled:
	case <-time.After(time.Second):
		t.Fatal("the handler was not cancelled")
	}
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, resp.Body); done <- err }()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("the connection stayed open")
	}
}

// Shutdown waits for streams that end on their own, final event included.
func TestShutdownWaitsForStreamsToEnd(t *testing.T) {
	t.Parallel()
	_, srv, b := newBridge(t, Config{})
	resp := do(t, newClient(t, "http1"), srv.URL+"?session_id=s&count=3&interval_ms=150", nil)
	readEvents(t, resp.Body, func(e event) bool { return e.name == "" })
	start := time.Now()
	if err := b.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before the stream ended", d)
	}
	events := readEvents(t, resp.Body, nil)
	if len(events) == 0 || events[len(events)-1].name != "end" {
		t.Errorf("events after shutdown %+v, want the rest and end", events)
	}
}

// Headers set in front of the bridge (CORS, request id) reach the browser
// on a connection the bridge took over, which then closes.
func TestDetachedResponseKeepsOuterHeaders(t *testing.T) {
	t.Parallel()
	_, h := newTickHandler(t)
	b, err := New(Config{Handler: h, Procedure: tickProcedure})
	if err != nil {
		t.Fatal(err)
	}
	outer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "https://app.example")
		w.Header().Set("X-Request-Id", "bad\r\nInjected: yes")
		b.ServeHTTP(w, r)
	})
	srv := httptest.NewServer(outer)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { shutdown(t, b) })
	for _, query := range []string{"session_id=s&count=1", "session_id=missing"} {
		resp := do(t, newClient(t, "http1"), srv.URL+"?"+query, nil)
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example" || !resp.Close ||
			resp.Header.Get("Injected") != "" || resp.Header.Get("Date") == "" {
			t.Errorf("%s: %d %v (close %v)", query, resp.StatusCode, resp.Header, resp.Close)
		}
	}
}

// startDetached serves a tick bridge over HTTP/1.1 only, started by start.
func startDetached(t *testing.T, start func(*httptest.Server)) (*tickServer, *httptest.Server) {
	t.Helper()
	ts, h := newTickHandler(t)
	b, err := New(Config{Handler: h, Procedure: tickProcedure})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(b)
	start(srv)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { shutdown(t, b) })
	return ts, srv
}

// Over TLS the bridge takes the TLS connection over just the same, and
// still notices the browser leaving.
func TestDetachedOverTLS(t *testing.T) {
	t.Parallel()
	ts, srv := startDetached(t, (*httptest.Server).StartTLS) // EnableHTTP2 is off
	resp := do(t, srv.Client(), srv.URL+"?session_id=s&count=1&block=true", nil)
	if resp.ProtoMajor != 1 || resp.TLS == nil {
		t.Fatalf("got %s, TLS %v; want HTTP/1.1 over TLS", resp.Proto, resp.TLS != nil)
	}
	checkDisconnect(t, ts, resp)
}

// opaqueListener hands out connections without a file descriptor, as a
// listener wrapper might: the bridge then watches each with a reader.
type opaqueListener struct{ net.Listener }

type opaqueConn struct{ net.Conn }

func (l opaqueListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return opaqueConn{c}, nil
}

func TestDetachedWithoutDescriptor(t *testing.T) {
	t.Parallel()
	ts, srv := startDetached(t, func(srv *httptest.Server) {
		srv.Listener = opaqueListener{srv.Listener}
		srv.Start()
	})
	checkDisconnect(t, ts, do(t, newClient(t, "http1"), srv.URL+"?session_id=s&count=1&block=true", nil))
}

// checkDisconnect leaves a stream that never ends after its first event,
// and checks that its handler is cancelled within a second.
func checkDisconnect(t *testing.T, ts *tickServer, resp *http.Response) {
	t.Helper()
	readEvents(t, resp.Body, func(e event) bool { return e.name == "" })
	closed := time.Now()
	_ = resp.Body.Close()
	select {
	case at := <-ts.cancelled:
		if d := at.Sub(closed); d > time.Second {
			t.Errorf("handler cancelled %v after the browser left", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the handler never saw the browser leave")
	}
}

// shutdown ends b's streams at the end of a test, cutting those still open
// after a few seconds.
func shutdown(t *testing.T, b *Bridge) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Errorf("streams were still open at the end of the test: %v", err)
	}
}
