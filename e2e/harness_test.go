// Package e2e holds end-to-end tests: the reference backends on loopback
// sockets of their own, a gateway in front of them, and callers speaking
// every protocol the gateway serves.
package e2e

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/server"
)

// stack is a running gateway with its backends.
type stack struct {
	url string // the gateway's base URL
}

// startStack starts the reference backends (SQLite in a temporary
// directory) and a gateway forwarding to them over loopback gRPC.
func startStack(t testing.TB, mutate ...func(*server.Config)) *stack {
	t.Helper()
	gwLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + gwLn.Addr().String()
	ls, err := backends.LoopbackListeners()
	if err != nil {
		t.Fatal(err)
	}
	key := interceptors.GenerateBackendKey()
	b, err := backends.Start(context.Background(), backends.Config{DataDir: t.TempDir(), PublicURL: url, AuthKey: key}, ls)
	if err != nil {
		t.Fatal(err)
	}
	agentAddr, runtimeAddr, engineAddr := b.Addrs()
	cfg := server.Config{
		Agent:      server.Upstream{Address: agentAddr},
		Runtime:    server.Upstream{Address: runtimeAddr},
		Engine:     server.Upstream{Address: engineAddr},
		MaxTimeout: 30 * time.Second,
		SSE:        server.SSEConfig{Heartbeat: time.Second},
		Security:   server.SecurityConfig{BackendKey: string(key)},
	}
	for _, m := range mutate {
		m(&cfg)
	}
	t.Cleanup(func() {
		shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		if err := b.Shutdown(shutdownCtx); err != nil {
			t.Errorf("backends: %v", err)
		}
	})
	serveGateway(t, gwLn, cfg)
	return &stack{url: url}
}

// serveGateway serves a gateway built from cfg on ln until the test ends.
func serveGateway(t testing.TB, ln net.Listener, cfg server.Config) {
	t.Helper()
	gw, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway: %v", err)
		}
		_ = gw.Close()
	})
}

// h2c is an HTTP/2-only cleartext client, as gRPC callers use.
func h2c(t testing.TB) *http.Client {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// http1 is an HTTP/1.1 client, as curl and browsers commonly are.
func http1(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
