package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// startH2C serves h on a kernel-chosen loopback port, speaking HTTP/1.1 and
// cleartext HTTP/2, until the test ends.
func startH2C(tb testing.TB, h http.Handler) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(h)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = protocols
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv
}

// gatewayBefore serves backend on cleartext HTTP/2 as all three upstreams
// of a gateway configured by cfg, and returns both URLs.
func gatewayBefore(tb testing.TB, backend http.Handler, cfg Config) (backendURL, gatewayURL string) {
	tb.Helper()
	srv := startH2C(tb, backend)
	up := Upstream{Address: srv.Listener.Addr().String()}
	cfg.Engine, cfg.Agent, cfg.Runtime = up, up, up
	_, gw := startGateway(tb, cfg)
	return srv.URL, gw
}

// h2cClient speaks cleartext HTTP/2 only, as gRPC callers do.
func h2cClient(tb testing.TB) *http.Client {
	tb.Helper()
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: protocols}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// dialH2 opens a cleartext HTTP/2 connection to url by hand and sends
// the preface and SETTINGS, for tests that read the frames the gateway
// sends; the connection closes with the test.
func dialH2(t *testing.T, url string) *http2.Framer {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return fr
}

// http1Client speaks HTTP/1.1 only, as curl and browsers commonly do.
func http1Client(tb testing.TB) *http.Client {
	tb.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12}}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// startGateway builds a gateway from cfg and serves it through Serve, the
// production path, on a loopback port.
func startGateway(tb testing.TB, cfg Config) (*Gateway, string) {
	tb.Helper()
	if cfg.Security.BackendKey == "" {
		cfg.Security.BackendKey = testBackendKey
	}
	return serveGateway(tb, cfg)
}

// serveGateway is startGateway for cfg as it is, without a backend key
// if it names none.
func serveGateway(tb testing.TB, cfg Config) (*Gateway, string) {
	tb.Helper()
	gw, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Serve: %v", err)
		}
		_ = gw.Close()
	})
	return gw, "http://" + ln.Addr().String()
}

// testBackendKey is the key test gateways and reference backends share.
const testBackendKey = "flowgate-test-backend-key-0123456789abcdef"

// deadAddress returns a loopback address nothing listens on.
func deadAddress(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// lockedBuffer collects log output written from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
