package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test start this package's command as a real process: the
// test binary re-executes itself with FLOWGATE_TEST_MAIN set.
func TestMain(m *testing.M) {
	if os.Getenv("FLOWGATE_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// startProcess runs flowgate in a child process with args and env, and
// returns its base URL once it serves.
func startProcess(t *testing.T, env []string, args ...string) string {
	t.Helper()
	url, _ := startBinary(t, os.Args[0], append(env, "FLOWGATE_TEST_MAIN=1"), args...)
	return url
}

// startBinary runs the flowgate binary bin with args and env, and returns
// its base URL once it serves, and its process id.
func startBinary(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// SIGTERM, as an orchestrator stops it: the process drains and
		// exits 0.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("flowgate process did not exit cleanly on SIGTERM: %v", err)
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Error("flowgate process did not exit on SIGTERM")
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("flowgate process printed no start-up line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return strings.Fields(line[strings.Index(line, "http://"):])[0], cmd.Process.Pid
}

// TestTwoProcessesShareOneRedisLimit starts two gateway processes on the
// Redis of this machine with the same per-IP budget and key prefix: calls
// spread over both get one shared burst, then 429 with Retry-After.
func TestTwoProcessesShareOneRedisLimit(t *testing.T) {
	t.Parallel()
	redisURL := os.Getenv("FLOWGATE_TEST_REDIS_URL")
	if redisURL == "" {
		t.Skip("FLOWGATE_TEST_REDIS_URL is not set")
	}
	env := []string{
		"REDIS_URL=" + redisURL,
		fmt.Sprintf("FLOWGATE_REDIS_PREFIX=flowgate-test:%d:", time.Now().UnixNano()),
		"FLOWGATE_RATE_LIMIT_IP=0.01",
		"FLOWGATE_RATE_LIMIT_IP_BURST=3",
	}
	urls := []string{
		startProcess(t, env, "-listen", "127.0.0.1:0", "-data-dir", t.TempDir()),
		startProcess(t, env, "-listen", "127.0.0.1:0", "-data-dir", t.TempDir()),
	}
	allowed, limited := 0, 0
	for i := range 8 {
		res, err := http.Get(urls[i%2] + "/api/v1/workflow/deployments")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		switch res.StatusCode {
		case http.StatusOK:
			allowed++
		case http.StatusTooManyRequests:
			limited++
			if res.Header.Get("Retry-After") == "" || !strings.Contains(string(body), `"RATE_LIMITED"`) {
				t.Errorf("429 without Retry-After or the contract's code: %v %s", res.Header, body)
			}
		default:
			t.Errorf("status %d: %s", res.StatusCode, body)
		}
	}
	if allowed != 3 || limited != 5 {
		t.Errorf("two processes allowed %d and limited %d calls, want one shared burst of 3", allowed, limited)
	}
}
