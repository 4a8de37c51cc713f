package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	bombInflated  = 256 << 20
	bombBodyLimit = 4 << 20 // flowgate's default -max-body-bytes
)

// TestGzipBombMemoryBounded runs flowgate, built without the race detector
// (whose shadow memory would swamp what the gateway itself holds), with
// authentication on and the default body limit. It sends one small gzip
// body that inflates to 256 MiB over each protocol, without credentials,
// and reads the process's peak resident memory (VmHWM) before and after:
// the peak may grow by less than twice the body limit.
func TestGzipBombMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the gateway")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	t.Parallel()
	bin := buildFlowgate(t)
	url, pid := startBinary(t, bin, []string{"SECRET_KEY=" + strings.Repeat("k", 32)},
		"-listen", "127.0.0.1:0", "-data-dir", t.TempDir())
	bomb := gzipZeros(t, bombInflated)
	if len(bomb) >= bombBodyLimit {
		t.Fatalf("the bomb is %d bytes on the wire, not under the body limit", len(bomb))
	}
	small := gzipZeros(t, 64)
	for _, c := range bombCalls {
		_ = c.send(t, url, small) // warm the paths up: the peak before counts them
	}
	before, cpuBefore := procPeakRSS(t, pid), procCPU(t, pid)
	for _, c := range bombCalls {
		got := c.send(t, url, bomb)
		for _, want := range c.want {
			if !strings.Contains(got, want) {
				t.Errorf("%s: got %q, want %q in it", c.name, got, want)
			}
		}
	}
	after, cpuAfter := procPeakRSS(t, pid), procCPU(t, pid)
	t.Logf("%d bombs of %d KiB inflating to %d MiB: peak RSS %d -> %d KiB, CPU %v",
		len(bombCalls), len(bomb)>>10, bombInflated>>20, before>>10, after>>10, cpuAfter-cpuBefore)
	if growth := after - before; growth >= 2*bombBodyLimit {
		t.Errorf("peak RSS grew by %d KiB, want under %d KiB (twice the body limit)", growth>>10, 2*bombBodyLimit>>10)
	}
}

// bombCall sends a compressed body the way one protocol does and returns
// the status, the grpc-status and the body, to look for the error in.
type bombCall struct {
	name, path, contentType string
	header                  map[string]string
	enveloped, http2, chunk bool
	want                    []string
}

const (
	executeProcedure = "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow"
	chatProcedure    = "/workflow.agent.v1.WorkflowAgentService/Chat"
)

var (
	bombTooLarge   = []string{"413 ", `"code":"PAYLOAD_TOO_LARGE"`, "once decompressed"}
	bombExhausted  = []string{`"code":"resource_exhausted"`, "once decompressed"}
	bombGRPCStatus = []string{"grpc-status 8 "}
)

var bombCalls = []bombCall{
	{name: "rest", path: "/api/v1/workflow/execute", contentType: "application/json",
		header: map[string]string{"Content-Encoding": "gzip"}, want: bombTooLarge},
	{name: "rest chunked", path: "/api/v1/workflow/execute", contentType: "application/json",
		header: map[string]string{"Content-Encoding": "gzip"}, chunk: true, want: bombTooLarge},
	{name: "connect", path: executeProcedure, contentType: "application/proto",
		header: map[string]string{"Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}, want: append([]string{"429 "}, bombExhausted...)},
	{name: "connect stream", path: chatProcedure, contentType: "application/connect+proto",
		header: map[string]string{"Connect-Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}, enveloped: true, want: bombExhausted},
	{name: "grpc", path: executeProcedure, contentType: "application/grpc",
		header: map[string]string{"Grpc-Encoding": "gzip", "Te": "trailers"}, enveloped: true, http2: true, chunk: true, want: bombGRPCStatus},
	{name: "grpc-web", path: executeProcedure, contentType: "application/grpc-web+proto",
		header: map[string]string{"Grpc-Encoding": "gzip"}, enveloped: true, want: bombGRPCStatus},
}

func (c bombCall) send(t *testing.T, url string, compressed []byte) string {
	t.Helper()
	body := compressed
	if c.enveloped {
		body = make([]byte, 5, 5+len(compressed))
		body[0] = 1
		binary.BigEndian.PutUint32(body[1:], uint32(len(compressed))) //nolint:gosec // under the body limit
		body = append(body, compressed...)
	}
	var reader io.Reader = bytes.NewReader(body)
	if c.chunk {
		reader = io.MultiReader(reader) // no Content-Length
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+c.path, reader)
	req.Header.Set("Content-Type", c.contentType)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	tr := &http.Transport{}
	if c.http2 {
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatalf("%s: %v", c.name, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	status := res.Trailer.Get("Grpc-Status") + res.Header.Get("Grpc-Status")
	if i := bytes.Index(data, []byte("grpc-status:")); i >= 0 { // a gRPC-Web trailer frame
		status += strings.TrimSpace(strings.SplitN(string(data[i+len("grpc-status:"):]), "\r\n", 2)[0])
	}
	return fmt.Sprintf("%d grpc-status %s %s", res.StatusCode, status, data)
}

// buildFlowgate builds this command into a temporary directory.
func buildFlowgate(t *testing.T) string {
	t.Helper()
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goTool); err != nil {
		if goTool, err = exec.LookPath("go"); err != nil {
			t.Skip("no go command to build the gateway with")
		}
	}
	bin := filepath.Join(t.TempDir(), "flowgate")
	cmd := exec.CommandContext(t.Context(), goTool, "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// gzipZeros returns a gzip stream of n zero bytes.
func gzipZeros(t *testing.T, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, len(zeros))
		_, _ = zw.Write(zeros[:k])
		n -= k
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// procPeakRSS reads a process's peak resident set size in bytes.
func procPeakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM for process %d", pid)
	return 0
}

// procCPU reads the user and system CPU time a process has used, assuming
// the usual 100 clock ticks per second.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
