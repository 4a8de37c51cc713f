package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowgate/flowgate/sse"
)

// drainTracker counts what a shutdown may have to cut: the connections
// net/http still serves and the calls in flight on them. Streams on
// connections the SSE bridges took over are counted by the bridges.
type drainTracker struct {
	calls atomic.Int64

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func newDrainTracker() *drainTracker {
	return &drainTracker{conns: map[net.Conn]struct{}{}}
}

// track makes srv report its connections and calls to t.
func (t *drainTracker) track(srv *http.Server) {
	next := srv.ConnState
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		t.connState(c, state)
		if next != nil {
			next(c, state)
		}
	}
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.calls.Add(1)
		defer t.calls.Add(-1)
		h.ServeHTTP(w, r)
	})
}

// connState sees every change of a connection's state, twice per request
// on a keep-alive connection: only the start and end of a connection take
// the lock.
func (t *drainTracker) connState(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		t.mu.Lock()
		t.conns[c] = struct{}{}
		t.mu.Unlock()
	case http.StateClosed, http.StateHijacked:
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
	}
}

func (t *drainTracker) open() (conns, calls int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns), int(t.calls.Load())
}

// beginDrain turns /readyz to 503 and keeps serving for the drain delay,
// the time load balancers take to notice and send calls elsewhere.
func (g *Gateway) beginDrain() {
	g.health.draining.Store(true)
	if g.cfg.DrainDelay > 0 {
		g.logger.Info("draining: not ready, still serving", slog.Duration("delay", g.cfg.DrainDelay))
		time.Sleep(g.cfg.DrainDelay)
	}
}

// shutdown stops srv: it stops accepting, ends open streams (their callers
// are told the gateway is shutting down and reconnect) and waits up to the
// shutdown timeout for in-flight calls. Whatever is still running then is
// cut and logged: a drain that ran out of time has still stopped the
// gateway, so it is no error of the process.
func (g *Gateway) shutdown(ctx context.Context, srv *http.Server, t *drainTracker, h1 *h1Fast) {
	g.logger.Info("shutting down", slog.Duration("timeout", g.cfg.ShutdownTimeout))
	for _, b := range g.bridges {
		b.BeginShutdown()
	}
	g.stopStreams()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.ShutdownTimeout)
	defer cancel()
	var conns, calls, streams int
	fastCut, h1Cut := make(chan int, 1), make(chan int, 1)
	go func() { fastCut <- g.fast.stop(ctx) }()
	go func() { h1Cut <- h1.stop(ctx) }()
	// The HTTP/1.1 loop's calls run in srv's handler, and are counted
	// with net/http's.
	err := srv.Shutdown(ctx)
	if h1Conns := <-h1Cut; err != nil || h1Conns > 0 {
		conns, calls = t.open()
		conns += h1Conns
	}
	if err != nil {
		_ = srv.Close()
	}
	h1.closeAll()
	calls += <-fastCut
	// Streams on connections taken over from net/http end with the others
	// (stopStreams ended their calls); wait for their final events.
	for _, b := range g.bridges {
		var cut *sse.CutError
		if errors.As(b.Shutdown(ctx), &cut) {
			streams += cut.Streams
		}
	}
	if conns+calls+streams > 0 {
		g.logger.Warn("shutdown timeout passed: cut what was still open",
			slog.Duration("timeout", g.cfg.ShutdownTimeout),
			slog.Int("connections", conns), slog.Int("calls", calls), slog.Int("streams", streams))
	}
}
