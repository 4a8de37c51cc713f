package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
	base, stop := runProcess(t, io.Discard, env, args...)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("flowgate process did not exit cleanly on SIGTERM: %v", err)
		}
	})
	return base
}

// runProcess runs flowgate in a child process whose log goes to stderr. It
// returns the base URL once the process serves, and stop, which sends
// SIGTERM, as an orchestrator stops it, and returns how the process exited.
func runProcess(t *testing.T, stderr io.Writer, env []string, args ...string) (base string, stop func() error) {
	t.Helper()
	base, _, stop = runBinary(t, os.Args[0], stderr, append(env, "FLOWGATE_TEST_MAIN=1"), args...)
	return base, stop
}

// startBinary runs the flowgate binary bin with args and env, and returns
// its base URL once it serves, and its process id.
func startBinary(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	base, pid, stop := runBinary(t, bin, io.Discard, env, args...)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("flowgate process did not exit cleanly on SIGTERM: %v", err)
		}
	})
	return base, pid
}

// runBinary runs bin as runProcess does, and also returns its process id.
func runBinary(t *testing.T, bin string, stderr io.Writer, env []string, args ...string) (base string, pid int, stop func() error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop = sync.OnceValue(func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("no exit 30s after SIGTERM")
		}
	})
	t.Cleanup(func() { _ = stop() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("flowgate process printed no start-up line: %v", err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return strings.Fields(line[strings.Index(line, "http://"):])[0], cmd.Process.Pid, stop
}

// A call that outlives -shutdown-timeout is cut: SIGTERM still exits 0,
// and the log says what was cut.
func TestSIGTERMPastTheShutdownTimeoutExitsZero(t *testing.T) {
	t.Parallel()
	logFile, err := os.Create(filepath.Join(t.TempDir(), "flowgate.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	base, stop := runProcess(t, logFile, nil, "-listen", "127.0.0.1:0", "-data-dir", t.TempDir(), "-shutdown-timeout", "300ms")
	slow := `{"workflow_definition":{"nodes":[{"id":"t","type":"trigger"},{"id":"wait","type":"delay","parameters":{"duration":"20s"}}],"connections":[{"source":"t","target":"wait"}]}}`
	ended := make(chan error, 1)
	go func() {
		res, err := http.Post(base+"/api/v1/workflow/execute", "application/json", strings.NewReader(slow))
		if err == nil {
			res.Body.Close()
		}
		ended <- err
	}()
	time.Sleep(500 * time.Millisecond) // the call is in flight
	start := time.Now()
	exit := stop()
	took := time.Since(start)
	log, _ := os.ReadFile(logFile.Name())
	if exit != nil {
		t.Fatalf("exit after SIGTERM with a call past the shutdown timeout: %v\n%s", exit, log)
	}
	if took > 5*time.Second {
		t.Errorf("the process took %v to exit with a 300ms shutdown timeout", took)
	}
	<-ended
	var cut map[string]any
	for line := range strings.SplitSeq(string(log), "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil && strings.Contains(fmt.Sprint(entry["msg"]), "cut") {
			cut = entry
		}
	}
	if cut == nil || cut["calls"] != 1.0 || cut["connections"] != 1.0 {
		t.Errorf("log line about the cut %v, want 1 call on 1 connection; log:\n%s", cut, log)
	}
}
