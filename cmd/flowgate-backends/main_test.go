package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"connectrpc.com/connect"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestRefusesToStartWithoutKey(t *testing.T) {
	t.Parallel()
	err := run(t.Context(), []string{"-data-dir", t.TempDir()}, env(nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "FLOWGATE_BACKEND_KEY") {
		t.Errorf("started without a key: %v", err)
	}
	err = run(t.Context(), []string{"-data-dir", t.TempDir(), "-agent-port", "0", "-runtime-port", "0", "-engine-port", "0"},
		env(map[string]string{"FLOWGATE_BACKEND_KEY": "short"}), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Errorf("started with a short key: %v", err)
	}
}

// TestListensOnLoopbackAndRefusesUnsignedCalls: by default the services
// listen on 127.0.0.1 only, and a call without the gateway's token is
// refused.
func TestListensOnLoopbackAndRefusesUnsignedCalls(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	out, stdout := io.Pipe()
	done := make(chan error, 1)
	dir := t.TempDir()
	go func() {
		done <- run(ctx, []string{"-data-dir", dir, "-agent-port", "0", "-runtime-port", "0", "-engine-port", "0"},
			env(map[string]string{"FLOWGATE_BACKEND_KEY": "flowgate-backends-test-key-0123456789"}), stdout, io.Discard)
		_ = stdout.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	m := regexp.MustCompile(`agent on (\S+), runtime on (\S+), engine on (\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no addresses printed: %q (%v)", line, err)
	}
	for _, addr := range m[1:] {
		host, _, err := net.SplitHostPort(strings.TrimSuffix(addr, ","))
		if err != nil || !net.ParseIP(host).IsLoopback() {
			t.Errorf("listening on %q, want loopback", addr)
		}
	}
	req := connect.NewRequest(&runtimev1.ListDeploymentsRequest{})
	req.Header().Set("X-Flowgate-Tenant", "victim")
	_, err = runtimev1connect.NewWorkflowRuntimeServiceClient(http.DefaultClient, "http://"+m[2]).ListDeployments(t.Context(), req)
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("unsigned call: %v", err)
	}
}
