package engine_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flowgate/flowgate/backends/engine"
)

const secretBody = "loopback-secret-7f3a"

// secretServer serves secretBody on addr ("127.0.0.1:0" or "[::1]:0").
func secretServer(t *testing.T, addr string) *httptest.Server {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if to := r.URL.Query().Get("to"); to != "" {
			http.Redirect(w, r, to, http.StatusFound)
			return
		}
		_, _ = io.WriteString(w, secretBody)
	}))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// refused runs an http_request to url and checks that it failed with
// want in its error and that nothing of the secret came back.
func refused(t *testing.T, s *engine.Service, url, want string) string {
	t.Helper()
	res := execute(t, s, httpFlow(url, nil), nil)
	call := nodeResult(t, res, "call")
	if res.GetStatus() != "failed" || strings.Contains(fmt.Sprint(res), secretBody) {
		t.Fatalf("%s: status %q, result %v", url, res.GetStatus(), res)
	}
	if !strings.Contains(call.GetError(), want) {
		t.Fatalf("%s: error %q, want it to mention %q", url, call.GetError(), want)
	}
	return call.GetError()
}

// TestZonedLoopbackRefused: an IPv6 zone on a loopback address does not
// get it past the guard, neither in the URL nor in a redirect's Location.
func TestZonedLoopbackRefused(t *testing.T) {
	t.Parallel()
	v6 := secretServer(t, "[::1]:0")
	port := v6.Listener.Addr().(*net.TCPAddr).Port
	zoned := fmt.Sprintf("http://[::1%%25lo]:%d/secret", port)
	t.Run("direct", func(t *testing.T) {
		t.Parallel()
		refused(t, newEngine(t, engine.Config{}), zoned, "not allowed")
		refused(t, newEngine(t, engine.Config{}), fmt.Sprintf("http://[::1%%251]:%d/secret", port), "not allowed")
	})
	t.Run("redirect", func(t *testing.T) {
		t.Parallel()
		v4 := secretServer(t, "127.0.0.1:0")
		s := newEngine(t, engine.Config{HTTPAllowHosts: []string{"127.0.0.1"}})
		refused(t, s, v4.URL+"/?to="+strings.ReplaceAll(zoned, "%", "%25"), "not allowed")
		mapped := fmt.Sprintf("http://[::ffff:127.0.0.1]:%d/secret", v4.Listener.Addr().(*net.TCPAddr).Port)
		refused(t, s, v4.URL+"/?to="+mapped, "not allowed")
	})
}

// TestOtherLoopbackSpellingsRefused: numeric host notations that some
// resolvers read as 127.0.0.1 never reach it.
func TestOtherLoopbackSpellingsRefused(t *testing.T) {
	t.Parallel()
	v4 := secretServer(t, "127.0.0.1:0")
	port := v4.Listener.Addr().(*net.TCPAddr).Port
	s := newEngine(t, engine.Config{})
	for _, host := range []string{"2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]"} {
		url := fmt.Sprintf("http://%s:%d/", host, port)
		res := execute(t, s, httpFlow(url, nil), nil)
		if res.GetStatus() != "failed" || strings.Contains(fmt.Sprint(res), secretBody) {
			t.Errorf("%s: status %q, result %v", url, res.GetStatus(), res)
		}
		t.Logf("%s: %s", host, nodeResult(t, res, "call").GetError())
	}
}

// TestHTTPErrorsDoNotLeakAddresses: a refused or failed request says what
// went wrong without the resolver's address or what the name resolved to.
func TestHTTPErrorsDoNotLeakAddresses(t *testing.T) {
	t.Parallel()
	v4 := secretServer(t, "127.0.0.1:0")
	port := v4.Listener.Addr().(*net.TCPAddr).Port
	s := newEngine(t, engine.Config{})
	msg := refused(t, s, fmt.Sprintf("http://localhost:%d/", port), "destination not allowed")
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "resolves") {
		t.Errorf("refusal reveals the resolved address: %q", msg)
	}
	msg = refused(t, s, "http://no-such-host.invalid/", `could not resolve host "no-such-host.invalid"`)
	if strings.Contains(msg, ":53") || strings.Contains(msg, "lookup") {
		t.Errorf("DNS failure reveals the resolver: %q", msg)
	}
	// A closed port on an allowlisted name: the failure names the host the
	// workflow gave, not the address it resolved to.
	closed := newEngine(t, engine.Config{HTTPAllowHosts: []string{"localhost"}})
	msg = refused(t, closed, "http://localhost:1/", `could not reach host "localhost"`)
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "[::1]") {
		t.Errorf("connection failure reveals the address: %q", msg)
	}
}
