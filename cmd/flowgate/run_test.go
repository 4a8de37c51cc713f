package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flowgate/flowgate/cmd/internal/flagenv"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestFlagsWinOverEnvironment(t *testing.T) {
	t.Parallel()
	o, err := parse([]string{"-listen", "127.0.0.1:9999", "-agent-port", "6001"}, env(map[string]string{
		"FLOWGATE_LISTEN":      "127.0.0.1:1111",
		"WORKFLOW_AGENT_PORT":  "7001",
		"WORKFLOW_ENGINE_PORT": "7003",
		"DEBUG":                "true",
		"ALLOWED_ORIGINS":      "https://a.example, https://b.example",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:9999" || o.upstreams[0].port != 6001 {
		t.Errorf("flags did not win: listen %q agent port %d", o.listen, o.upstreams[0].port)
	}
	if o.upstreams[2].port != 7003 || !o.debug {
		t.Errorf("environment ignored: engine port %d debug %v", o.upstreams[2].port, o.debug)
	}
	if got := strings.Join(o.security.AllowedOrigins, "|"); got != "https://a.example|https://b.example" {
		t.Errorf("origins = %q", got)
	}
	if o.upstreams[1].port != 50052 {
		t.Errorf("runtime port default = %d, want the seed's 50052", o.upstreams[1].port)
	}
}

func TestBadConfigurationFailsClearly(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want error
		text string
	}{
		{name: "unknown flag", args: []string{"-bogus"}, want: flagenv.ErrUsage, text: "-bogus"},
		{name: "stray argument", args: []string{"serve"}, want: flagenv.ErrUsage, text: `"serve"`},
		{name: "bad bool in env", env: map[string]string{"DEBUG": "maybe"}, want: flagenv.ErrEnvironment, text: "DEBUG"},
		{name: "bad duration", args: []string{"-max-timeout", "soon"}, want: flagenv.ErrUsage, text: "max-timeout"},
		{name: "half remote", env: map[string]string{"WORKFLOW_AGENT_HOST": "agent"}, text: "all three services or of none"},
		{name: "bad protocol", env: map[string]string{"WORKFLOW_AGENT_HOST": "a", "WORKFLOW_RUNTIME_HOST": "r", "WORKFLOW_ENGINE_HOST": "e", "FLOWGATE_ENGINE_PROTOCOL": "smoke"}, text: "smoke"},
		{name: "short backend key", args: []string{"-listen", "127.0.0.1:0", "-backend-key", "short"}, text: "at least 32"},
		{name: "port out of range", args: []string{"-engine-port", "70000"}, text: "out of range"},
		{name: "unusable listen address", args: []string{"-listen", "256.0.0.1:80"}, text: "could not listen"},
		{name: "bad log format", args: []string{"-log-format", "xml"}, text: "xml"},
		{name: "missing TLS key", args: []string{"-listen", "127.0.0.1:0", "-tls-cert", "cert.pem"}, text: "TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"-data-dir", t.TempDir()}, tc.args...)
			err := run(t.Context(), args, env(tc.env), io.Discard, io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %v is not %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.text) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want one line mentioning %q", err, tc.text)
			}
		})
	}
}

// TestServesEmbeddedAndDrainsOnShutdown runs the command as a user would
// with its embedded backends, starts a call that takes a second, and
// cancels the command's context as SIGTERM does: the call still completes
// and the command returns cleanly.
func TestServesEmbeddedAndDrainsOnShutdown(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	base, done := startRun(t, ctx, []string{"-log-format", "text"}, env(nil))

	res, err := http.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("health: %d", res.StatusCode)
	}

	slow := `{"workflow_definition":{"nodes":[{"id":"t","type":"trigger"},{"id":"wait","type":"delay","parameters":{"duration":"1s"}}],"connections":[{"source":"t","target":"wait"}]}}`
	type result struct {
		status int
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		res, err := http.Post(base+"/api/v1/workflow/execute", "application/json", strings.NewReader(slow))
		if err != nil {
			inflight <- result{err: err}
			return
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if !strings.Contains(string(body), `"succeeded"`) {
			err = errors.New(string(body))
		}
		inflight <- result{status: res.StatusCode, err: err}
	}()
	time.Sleep(300 * time.Millisecond) // the call is in flight
	cancel()
	r := <-inflight
	if r.err != nil || r.status != http.StatusOK {
		t.Errorf("in-flight call during shutdown: %d %v", r.status, r.err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after shutdown")
	}
}

func TestOperationsFlags(t *testing.T) {
	t.Parallel()
	o, err := parse([]string{"-metrics=false"}, env(map[string]string{"FLOWGATE_DRAIN_DELAY": "5s"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.metrics || o.drainDelay != 5*time.Second {
		t.Errorf("metrics %v, drain delay %v; want false, 5s", o.metrics, o.drainDelay)
	}
	if o, err = parse(nil, env(nil), io.Discard); err != nil || !o.metrics || o.drainDelay != 0 {
		t.Errorf("defaults: metrics %v, drain delay %v, %v; want true, 0", o.metrics, o.drainDelay, err)
	}
}

// startRun runs the command on a loopback port with its embedded backends
// until ctx ends, and returns its base URL and the channel run's result
// arrives on.
func startRun(t *testing.T, ctx context.Context, args []string, getenv func(string) string) (string, <-chan error) {
	t.Helper()
	stdout, w := io.Pipe()
	done := make(chan error, 1)
	args = append([]string{"-listen", "127.0.0.1:0", "-data-dir", t.TempDir()}, args...)
	go func() {
		done <- run(ctx, args, getenv, w, io.Discard)
		_ = w.Close()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("no start-up line: %v (%v)", err, <-done)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return strings.Fields(line[strings.Index(line, "http://"):])[0], done
}

func TestUpstreamAddress(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]string{
		"backend":                      "backend:50052",
		"a, b:7000,10.0.0.3":           "a:50052,b:7000,10.0.0.3:50052",
		"::1":                          "[::1]:50052",
		"https://runtime.internal":     "https://runtime.internal:50052",
		"https://runtime.internal/api": "https://runtime.internal:50052/api",
		"http://a:1,http://b":          "http://a:1,http://b:50052",
		"dns:///backends.svc":          "dns:///backends.svc:50052",
		"dns:///backends.svc:9000":     "dns:///backends.svc:9000",
	} {
		if got := upstreamAddress(host, 50052); got != want {
			t.Errorf("upstreamAddress(%q) = %q, want %q", host, got, want)
		}
	}
}
