package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// h1Exchange is one conversation on a fresh connection: the writes, sent
// in order (each after the answers the previous one asked for), and how
// many responses each asks for.
type h1Exchange struct {
	name    string
	writes  []string
	answers []int
	// served is how many requests the loop serves itself; handed whether
	// it hands the connection to net/http.
	served int64
	handed bool
	// noRoute is set when an answer is to be the gateway's 404.
	noRoute bool
}

const (
	h1Session = "POST /api/v1/session HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Request-Id: same\r\nContent-Length: 2\r\n\r\n{}"
	h1Execute = "POST /api/v1/workflow/execute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Request-Id: same\r\nContent-Length: 40\r\n\r\n{\"workflow_definition\":{\"name\":\"hello\"}}"
)

// grpcWebExecute is a binary gRPC-Web ExecuteWorkflow of the workflow
// named name.
func grpcWebExecute(name string) string {
	msg := executeMessage(name)
	frame := append([]byte{0, 0, 0, 0, byte(len(msg))}, msg...)
	return "POST /workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow HTTP/1.1\r\nHost: gw\r\n" +
		"Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nX-Request-Id: same\r\nContent-Length: " +
		strconv.Itoa(len(frame)) + "\r\n\r\n" + string(frame)
}

// executeMessage is the binary ExecuteWorkflowRequest of the workflow
// named name.
func executeMessage(name string) []byte {
	msg, err := proto.Marshal(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}})
	if err != nil {
		panic(err)
	}
	return msg
}

// h1ExecuteNamed is h1Execute of the workflow named name, which picks the
// test engine's answer.
func h1ExecuteNamed(name string) string {
	body := `{"workflow_definition":{"name":"` + name + `"}}`
	return strings.Replace(strings.TrimSuffix(h1Execute, `{"workflow_definition":{"name":"hello"}}`), "Content-Length: 40",
		"Content-Length: "+strconv.Itoa(len(body)), 1) + body
}

func h1Exchanges() []h1Exchange {
	huge := `{"workflow_definition":{"name":"` + strings.Repeat("x", 9000) + `"}}`
	return []h1Exchange{
		{name: "keep-alive", writes: []string{h1Execute, h1Session, h1Execute}, answers: []int{1, 1, 1}, served: 3},
		{name: "pipelined", writes: []string{h1Execute + h1Session + h1Execute}, answers: []int{3}, served: 3},
		{name: "connection close", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nConnection: close", 1)}, answers: []int{1}, served: 1},
		{name: "a GET, then a POST", writes: []string{h1Execute, "GET /api/v1/executions/e1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\n\r\n", h1Execute},
			answers: []int{1, 1, 1}, served: 3},
		{name: "pipelined behind a GET", writes: []string{h1Execute + "GET /api/v1/executions/e1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\n\r\n" + h1Execute},
			answers: []int{3}, served: 3},
		{name: "invalid JSON", writes: []string{strings.Replace(h1Execute, `"hello"}}`, `"hello"}!`, 1)}, answers: []int{1}, served: 1},
		{name: "backend error", writes: []string{h1ExecuteNamed("invalid"), h1ExecuteNamed("missing")}, answers: []int{1, 1}, served: 2},
		{name: "a large answer", writes: []string{h1ExecuteNamed("huge")}, answers: []int{1}, served: 1},
		{name: "chunked body", writes: []string{"POST /api/v1/workflow/execute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Request-Id: same\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
			answers: []int{1}, handed: true},
		{name: "Content-Length and Transfer-Encoding", writes: []string{"POST /api/v1/workflow/execute HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nX-Request-Id: same\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
			answers: []int{1}, handed: true},
		{name: "two Content-Lengths", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nContent-Length: 3", 1)}, answers: []int{1}, handed: true},
		{name: "folded header", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nX-Folded: a\r\n b", 1)}, answers: []int{1}, handed: true},
		{name: "bare line feeds", writes: []string{strings.ReplaceAll(h1Execute, "\r\n", "\n")}, answers: []int{1}, handed: true},
		{name: "no Host", writes: []string{strings.Replace(h1Execute, "Host: gw\r\n", "", 1)}, answers: []int{1}, handed: true},
		{name: "two Hosts", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nHost: other", 1)}, answers: []int{1}, handed: true},
		{name: "HTTP/1.0", writes: []string{strings.Replace(h1Execute, "HTTP/1.1", "HTTP/1.0", 1)}, answers: []int{1}, handed: true},
		{name: "Expect", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nExpect: 100-continue", 1)}, answers: []int{1}, handed: true},
		{name: "text body", writes: []string{strings.Replace(h1Execute, "application/json", "text/plain", 1)}, answers: []int{1}, served: 1},
		{name: "query", writes: []string{strings.Replace(h1Execute, "execute HTTP", "execute?x=1 HTTP", 1)}, answers: []int{1}, served: 1},
		{name: "escaped path", writes: []string{strings.Replace(h1Execute, "execute HTTP", "ex%65cute HTTP", 1)}, answers: []int{1}, served: 1, noRoute: true},
		{name: "unclean path", writes: []string{strings.Replace(h1Execute, "/workflow/", "//workflow/", 1)}, answers: []int{1}, served: 1, noRoute: true},
		{name: "a GET with a body", writes: []string{"GET /api/v1/executions/e1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\nContent-Length: 2\r\n\r\n{}"}, answers: []int{1}, served: 1},
		{name: "a DELETE", writes: []string{"DELETE /api/v1/workflow/deployments/d1 HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\n\r\n"}, answers: []int{1}, served: 1},
		{name: "a CORS preflight", writes: []string{"OPTIONS /api/v1/session HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n\r\n"}, answers: []int{1}, served: 1},
		{name: "the console", writes: []string{"GET / HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\n\r\n"}, answers: []int{1}, served: 1},
		{name: "Connect", writes: []string{"POST /workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nX-Request-Id: same\r\nContent-Length: 39\r\n\r\n{\"workflowDefinition\":{\"name\":\"hello\"}}",
			"POST /workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nConnect-Protocol-Version: 1\r\nX-Request-Id: same\r\nContent-Length: 41\r\n\r\n{\"workflowDefinition\":{\"name\":\"missing\"}}"},
			answers: []int{1, 1}, served: 2},
		{name: "gRPC-Web", writes: []string{grpcWebExecute("hello"), grpcWebExecute("invalid")}, answers: []int{1, 1}, served: 2},
		{name: "gRPC", writes: []string{strings.Replace(grpcWebExecute("hello"), "application/grpc-web+proto", "application/grpc", 1)}, answers: []int{1}, handed: true},
		{name: "an SSE route", writes: []string{"GET /api/v1/workflow_generation HTTP/1.1\r\nHost: gw\r\nX-Request-Id: same\r\n\r\n"}, answers: []int{1}, handed: true},
		{name: "absolute-form target", writes: []string{strings.Replace(h1Execute, "POST /api", "POST http://gw/api", 1)}, answers: []int{1}, handed: true},
		{name: "body over the buffer", writes: []string{strings.Replace(strings.Replace(h1Execute, "Content-Length: 40", "Content-Length: 9032", 1), `{"workflow_definition":{"name":"hello"}}`, huge, 1)},
			answers: []int{1}, handed: true},
		{name: "declared body over the limit", writes: []string{strings.Replace(h1Execute, "Content-Length: 40", "Content-Length: 9999999", 1)}, answers: []int{1}, handed: true},
		{name: "body in two writes", writes: []string{strings.TrimSuffix(h1Execute, `{"workflow_definition":{"name":"hello"}}`), `{"workflow_definition":{"name":"hello"}}`},
			answers: []int{0, 1}, handed: true},
		{name: "head in two writes", writes: []string{h1Execute[:30], h1Execute[30:]}, answers: []int{0, 1}, served: 1},
		{name: "bad header name", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nBad Name: x", 1)}, answers: []int{1}, handed: true},
		{name: "control byte in a value", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nX-Thing: a\x01b", 1)}, answers: []int{1}, handed: true},
		{name: "space before the colon", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host : gw", 1)}, answers: []int{1}, handed: true},
		{name: "method in lower case", writes: []string{strings.Replace(h1Execute, "POST", "post", 1)}, answers: []int{1}, handed: true},
		{name: "odd Connection", writes: []string{strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nConnection: upgrade", 1)}, answers: []int{1}, handed: true},
		{name: "signed Content-Length", writes: []string{strings.Replace(h1Execute, "Content-Length: 40", "Content-Length: +40", 1)}, answers: []int{1}, handed: true},
	}
}

// answerMasks hide what differs between two correct answers: times,
// generated ids and the connection's port.
var answerMasks = []*regexp.Regexp{
	regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`),
	regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`),
	regexp.MustCompile(`(?m)^Date: .*$`),
	regexp.MustCompile(`(?m)^X-Request-Id: [0-9a-f]{32}\r?$`), // minted for a refusal before the head is read
}

// converse runs x on a fresh connection to base and returns the answers,
// masked, and whether the server then closed the connection.
func converse(t *testing.T, addr string, x h1Exchange) ([]string, bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	var answers []string
	for i, w := range x.writes {
		if _, err := conn.Write([]byte(w)); err != nil {
			t.Fatalf("%s: write %d: %v", x.name, i, err)
		}
		if x.answers[i] == 0 {
			time.Sleep(300 * time.Millisecond) // longer than the loop waits for a body
		}
		for range x.answers[i] {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: response %d: %v", x.name, len(answers), err)
			}
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatalf("%s: response %d body: %v", x.name, len(answers), err)
			}
			// Framing may differ (a length or chunks) where both are right:
			// the body read whole, up to the next response, shows it is.
			res.Header.Del("Content-Length")
			res.Header.Del("Transfer-Encoding")
			var dump bytes.Buffer
			_ = res.Header.Write(&dump)
			_ = res.Trailer.Write(&dump)
			text := res.Status + "\n" + dump.String() + "\n" + string(body)
			for _, m := range answerMasks {
				text = m.ReplaceAllString(text, "*")
			}
			answers = append(answers, text)
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	_, err = br.ReadByte()
	return answers, errors.Is(err, io.EOF)
}

// dialH1 opens a connection to the gateway at base, closed with the test.
func dialH1(t *testing.T, base string) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, bufio.NewReader(conn)
}

// The loop answers every conversation as net/http does, byte for byte but
// for times and generated ids, and takes on only what it should: anything
// odd goes to net/http with the bytes already read.
func TestH1LoopAnswersAsNetHTTP(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.Security.MaxBodyBytes = 64 << 10
	compareH1(t, cfg, h1Exchanges())
	// A head over the server's limit is net/http's to refuse.
	cfg.Security.MaxHeaderBytes = 300
	long := strings.Replace(h1Execute, "Host: gw", "Host: gw\r\nX-Long: "+strings.Repeat("y", 400), 1)
	compareH1(t, cfg, []h1Exchange{
		{name: "head over the limit", writes: []string{long}, answers: []int{1}, handed: true},
		{name: "head within the limit", writes: []string{h1Execute}, answers: []int{1}, served: 1},
	})
}

// compareH1 runs each exchange on a gateway with the loop and one without.
func compareH1(t *testing.T, cfg Config, exchanges []h1Exchange) {
	t.Helper()
	loop, loopURL := startGateway(t, cfg)
	cfg.NetHTTP1 = true
	plain, plainURL := startGateway(t, cfg)
	if plain.h1.Load() != nil {
		t.Fatal("-http1-net-http left the loop on")
	}
	h1 := loop.h1.Load()
	for _, x := range exchanges {
		served, handed := h1.served.Load(), h1.handed.Load()
		got, gotClosed := converse(t, strings.TrimPrefix(loopURL, "http://"), x)
		want, wantClosed := converse(t, strings.TrimPrefix(plainURL, "http://"), x)
		if len(got) != len(want) {
			t.Errorf("%s: %d answers, net/http gives %d", x.name, len(got), len(want))
			continue
		}
		for i := range got {
			if strings.Contains(got[i], "no route for") && !x.noRoute {
				t.Errorf("%s: answer %d is the gateway's 404, not the route's:\n%s", x.name, i, got[i])
			}
			if got[i] != want[i] {
				t.Errorf("%s: answer %d:\n%s\nnet/http:\n%s", x.name, i, got[i], want[i])
			}
		}
		if gotClosed != wantClosed {
			t.Errorf("%s: connection closed %v, net/http %v", x.name, gotClosed, wantClosed)
		}
		if n := h1.served.Load() - served; n != x.served {
			t.Errorf("%s: the loop served %d requests, want %d", x.name, n, x.served)
		}
		if h := h1.handed.Load() > handed; h != x.handed {
			t.Errorf("%s: handed to net/http %v, want %v", x.name, h, x.handed)
		}
	}
}

// A caller that closes its connection during a long call cancels the call
// upstream, as net/http's background read does.
func TestH1LoopCancelsWhenTheCallerLeaves(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	gw, base := startGateway(t, b.cfg)
	conn, _ := dialH1(t, base)
	if _, err := conn.Write([]byte(h1ExecuteNamed("slow"))); err != nil {
		t.Fatal(err)
	}
	b.engine.waitForCalls(t, 1)
	if gw.h1.Load().served.Load() != 1 {
		t.Fatal("the loop did not serve the call")
	}
	time.Sleep(2 * h1WatchAfter)
	conn.Close()
	select {
	case <-b.engine.canceled:
	case <-time.After(5 * time.Second):
		t.Fatal("the call went on after its caller left")
	}
}

// A call that ends before the watch starts, and one that ends while it
// runs (cut by -max-timeout after the watch began reading), leave the
// connection as it was: the loop serves the next request on it.
func TestH1LoopWatchLeavesTheConnection(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.MaxTimeout = 4 * h1WatchAfter
	gw, base := startGateway(t, cfg)
	x := h1Exchange{name: "watch", writes: []string{h1Execute, h1ExecuteNamed("slow"), h1Execute}, answers: []int{1, 1, 1}}
	answers, closed := converse(t, strings.TrimPrefix(base, "http://"), x)
	if len(answers) != 3 || closed {
		t.Fatalf("%d answers, connection closed %v", len(answers), closed)
	}
	if answers[0] != answers[2] || !strings.Contains(answers[0], "200 OK") || !strings.Contains(answers[0], `"output":"hello"`) {
		t.Errorf("answers before and after the long call differ or failed:\n%s\n%s", answers[0], answers[2])
	}
	if !strings.Contains(answers[1], "504 Gateway Timeout") || !strings.Contains(answers[1], "did not answer in time") {
		t.Errorf("the long call: %s", answers[1])
	}
	if h1 := gw.h1.Load(); h1.served.Load() != 3 || h1.handed.Load() != 0 {
		t.Errorf("the loop served %d and handed %d, want 3 and 0", h1.served.Load(), h1.handed.Load())
	}
}

// Shutting down closes idle connections at once and lets a call in flight
// finish, telling its caller the connection closes.
func TestH1LoopShutdown(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.MaxTimeout = time.Second // ends the slow call, as an answer
	_, base, stop, served := serveLogged(t, cfg, 10*time.Second)
	idle, idleReader := dialH1(t, base)
	if _, err := idle.Write([]byte(h1Execute)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(idleReader, nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("first call: %v", err)
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		t.Fatal(err)
	}
	busy, busyReader := dialH1(t, base)
	if _, err := busy.Write([]byte(h1ExecuteNamed("slow"))); err != nil {
		t.Fatal(err)
	}
	b.engine.waitForCalls(t, 2)

	stop()
	_ = idle.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := idleReader.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection after shutdown began: read %v, want EOF at once", err)
	}
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err = http.ReadResponse(busyReader, nil)
	if err != nil {
		t.Fatalf("the call in flight got no answer: %v", err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusGatewayTimeout || !res.Close || !strings.Contains(string(body), "did not answer in time") {
		t.Errorf("the call in flight: %s, Connection %q, %s; want 504, close and the timeout's message", res.Status, res.Header.Get("Connection"), body)
	}
	if _, err := busyReader.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("busy connection after its answer: read %v, want EOF", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// The loop keeps net/http's timeouts: an idle connection closes after
// -idle-timeout, and a head that does not arrive whole within
// -read-header-timeout closes its connection without an answer.
func TestH1LoopTimeouts(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.Security.IdleTimeout = 300 * time.Millisecond
	cfg.Security.ReadHeaderTimeout = 300 * time.Millisecond
	gw, base := startGateway(t, cfg)
	closedWithin := func(conn net.Conn, br *bufio.Reader, d time.Duration) bool {
		_ = conn.SetReadDeadline(time.Now().Add(d))
		_, err := br.ReadByte()
		return errors.Is(err, io.EOF)
	}

	idle, br := dialH1(t, base)
	if _, err := idle.Write([]byte(h1Execute)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	start := time.Now()
	if !closedWithin(idle, br, 3*time.Second) || time.Since(start) < 200*time.Millisecond {
		t.Errorf("idle connection: closed after %v, want about 300ms", time.Since(start))
	}

	slow, slowReader := dialH1(t, base)
	if _, err := slow.Write([]byte(h1Execute[:40])); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if !closedWithin(slow, slowReader, 3*time.Second) || time.Since(start) < 200*time.Millisecond {
		t.Errorf("unfinished head: closed after %v, want about 300ms and no answer", time.Since(start))
	}
	if gw.h1.Load().served.Load() != 1 {
		t.Errorf("the loop served %d requests, want 1", gw.h1.Load().served.Load())
	}
}

// A large response to a caller that does not read is cut after the write
// timeout rather than holding the connection for ever.
func TestH1WriterTimesLargeWrites(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	s := newH1Fast(nil, nil, nil, 1<<20, time.Second, time.Second, 100*time.Millisecond)
	c := &h1Conn{srv: s, conn: server}
	w := &h1Writer{conn: c, header: http.Header{}}
	_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20))
	start := time.Now()
	w.finish()
	if w.err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("finish: %v after %v, want a timeout after about 100ms", w.err, time.Since(start))
	}
}

// A caller that pipelines requests and reads no answers cannot hold the
// connection's writer: even a small answer's write is then timed.
func TestH1WriterTimesPipelinedWrites(t *testing.T) {
	t.Parallel()
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	s := newH1Fast(nil, nil, nil, 1<<20, time.Second, time.Second, 100*time.Millisecond)
	c := &h1Conn{srv: s, conn: server, pipelined: true}
	w := &h1Writer{conn: c, header: http.Header{}}
	_, _ = io.WriteString(w, "a small answer")
	finished := make(chan struct{})
	go func() {
		w.finish()
		close(finished)
	}()
	select {
	case <-finished:
		if w.err == nil {
			t.Error("the write to a caller that reads nothing succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the write to a caller that reads nothing never ended")
	}
}

// A handler that flushes streams its response chunked, and one that
// writes more than the writer holds streams it too; both read back whole.
func TestH1WriterStreams(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		handler func(w http.ResponseWriter)
		want    string
	}{
		{"flush", func(w http.ResponseWriter) {
			_, _ = io.WriteString(w, "first ")
			http.NewResponseController(w).Flush() //nolint:errcheck // checked by the reader
			_, _ = io.WriteString(w, "second")
		}, "first second"},
		{"large", func(w http.ResponseWriter) {
			for range 5 {
				_, _ = w.Write(bytes.Repeat([]byte("z"), 40<<10))
			}
		}, strings.Repeat("z", 200<<10)},
	} {
		server, client := net.Pipe()
		s := newH1Fast(nil, nil, nil, 1<<20, time.Second, time.Second, time.Second)
		c := &h1Conn{srv: s, conn: server}
		w := &h1Writer{conn: c, header: http.Header{}}
		done := make(chan struct{})
		go func() {
			defer close(done)
			tc.handler(w)
			w.finish()
		}()
		res, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil || string(body) != tc.want || len(res.TransferEncoding) != 1 || res.TransferEncoding[0] != "chunked" {
			t.Errorf("%s: body %d bytes (%v), transfer encoding %v; want %d bytes, chunked", tc.name, len(body), err, res.TransferEncoding, len(tc.want))
		}
		<-done
		server.Close()
		client.Close()
	}
}

// FuzzParseH1 holds the parser to net/http's reading of the same bytes:
// whatever it takes on, net/http reads as the same request.
func FuzzParseH1(f *testing.F) {
	for _, x := range h1Exchanges() {
		for _, w := range x.writes {
			f.Add([]byte(w))
		}
	}
	// Lower-case names, which the parser looks up rather than computes.
	f.Add([]byte("POST /api/v1/session HTTP/1.1\r\nhost: gw\r\nuser-agent: h2load\r\naccept: */*\r\ncontent-type: application/json\r\n" +
		"x-api-key: k\r\nx-request-id: a\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}"))
	f.Add([]byte("GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, n, verdict := parseH1(data)
		if verdict != h1Parsed {
			return
		}
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(data[:n])))
		if err != nil {
			t.Fatalf("taken on, but net/http says %v", err)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Fatalf("net/http body: %v", err)
		}
		u := &url.URL{Path: req.target}
		if req.url != nil {
			u = req.url
		}
		if r.Method != req.method || r.URL.String() != u.String() || r.URL.Path != u.Path || r.URL.RawPath != u.RawPath ||
			r.RequestURI != req.target || r.Host != req.host || r.Close != req.close || !bytes.Equal(body, req.body) ||
			r.ContentLength != int64(len(req.body)) && !(r.ContentLength == 0 && len(req.body) == 0) {
			t.Fatalf("parsed %q %q %q close=%v body=%q; net/http: %s %q %q close=%v body=%q",
				req.method, req.target, req.host, req.close, req.body, r.Method, r.URL, r.Host, r.Close, body)
		}
		if len(r.Header) != len(req.header) {
			t.Fatalf("header %v; net/http %v", req.header, r.Header)
		}
		for k, v := range r.Header {
			if strings.Join(v, "\x00") != strings.Join(req.header[k], "\x00") {
				t.Fatalf("header %s: %q; net/http %q", k, req.header[k], v)
			}
		}
	})
}

// BenchmarkParseH1 is the loop's parsing of the shared bench's request;
// BenchmarkParseH1/net-http is net/http's reading of the same bytes.
func BenchmarkParseH1(b *testing.B) {
	data := []byte("POST /api/v1/session HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: h2load nghttp2/1.52.0\r\n" +
		"Accept: */*\r\ncontent-type: application/json\r\ncontent-length: 19\r\n\r\n{\"action\":\"create\"}")
	b.Run("loop", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, v := parseH1(data); v != h1Parsed {
				b.Fatal(v)
			}
		}
	})
	b.Run("net-http", func(b *testing.B) {
		b.ReportAllocs()
		rd := bytes.NewReader(data)
		br := bufio.NewReader(rd)
		for b.Loop() {
			rd.Reset(data)
			br.Reset(rd)
			r, err := http.ReadRequest(br)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
