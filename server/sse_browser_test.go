package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/agent"
)

// chromiumPath is where Debian's chromium package installs the browser.
const chromiumPath = "/usr/bin/chromium"

// slowModel is an OpenAI-compatible server that streams its replies with
// pauses and answers plans from a script: the first draft is invalid, and
// the second waits until the test releases it, so that a generation is
// still running when the test cuts the browser's connections.
type slowModel struct {
	release chan struct{}
	mu      sync.Mutex
	plans   int
}

const (
	invalidDraft = `{"status":"ready","name":"Big orders","trigger":{"type":"webhook","path":"big-orders"},"workflow_definition":{"name":"Big orders","nodes":[{"id":"t","type":"trigger"},{"id":"c","type":"condition","parameters":{"expression":"trigger.body.amount >"}}],"connections":[{"source":"t","target":"c"}]}}`
	validDraft   = `{"status":"ready","name":"Big orders","trigger":{"type":"webhook","path":"big-orders"},"workflow_definition":{"name":"Big orders","nodes":[{"id":"t","type":"trigger","parameters":{"source":"webhook"}},{"id":"c","type":"condition","parameters":{"expression":"trigger.body.amount > 100"}},{"id":"h","type":"http_request","parameters":{"method":"POST","url":"https://example.com/orders","body":"{{ trigger.body }}"}}],"connections":[{"source":"t","target":"c"},{"source":"c","target":"h","branch":"true"}]}}`
)

func (m *slowModel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Stream bool `json:"stream"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	if body.Stream {
		w.Header().Set("Content-Type", "text/event-stream")
		for i, piece := range []string{"I will check ", "each order's amount ", "and POST the big ones."} {
			if i > 0 {
				time.Sleep(300 * time.Millisecond)
			}
			chunk, _ := json.Marshal(map[string]any{"choices": []any{map[string]any{"delta": map[string]any{"content": piece}}}})
			fmt.Fprintf(w, "data: %s\n\n", chunk)
			w.(http.Flusher).Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
		return
	}
	m.mu.Lock()
	m.plans++
	n := m.plans
	m.mu.Unlock()
	content := invalidDraft
	if n > 1 {
		select {
		case <-m.release:
		case <-r.Context().Done():
			return
		}
		content = validDraft
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{"message": map[string]any{"role": "assistant", "content": content}}}})
}

// cutter is a TCP proxy in front of the gateway whose open connections
// the test can cut, as a network failure would.
type cutter struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newCutter(tb testing.TB, target string) *cutter {
	tb.Helper()
	return listenCutter(tb, "127.0.0.1:0", target)
}

// listenCutter is a cutter listening on addr.
func listenCutter(tb testing.TB, addr, target string) *cutter {
	tb.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	c := &cutter{ln: ln}
	tb.Cleanup(func() { _ = ln.Close(); c.cut() })
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); _ = out.Close() }()
			go func() { _, _ = io.Copy(in, out); _ = in.Close() }()
		}
	}()
	return c
}

func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	c.conns = nil
}

type logEntry struct {
	Stream string         `json:"stream"`
	Kind   string         `json:"kind"`
	T      float64        `json:"t"`
	ID     string         `json:"id"`
	Data   map[string]any `json:"data"`
}

func TestBrowserEventSource(t *testing.T) {
	t.Parallel()
	requireChromium(t)
	model := &slowModel{release: make(chan struct{})}
	modelSrv := httptest.NewServer(model)
	t.Cleanup(modelSrv.Close)
	page := httptest.NewServer(http.FileServer(http.Dir("testdata")))
	t.Cleanup(page.Close)

	ls, err := backends.LoopbackListeners()
	if err != nil {
		t.Fatal(err)
	}
	b, err := backends.Start(context.Background(), backends.Config{
		DataDir: t.TempDir(), PublicURL: "http://gateway.test", AuthKey: []byte(testBackendKey),
		OpenAI: agent.OpenAIConfig{BaseURL: modelSrv.URL + "/v1", Model: "test"},
	}, ls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	a, r, e := b.Addrs()
	_, base := startGateway(t, Config{
		Agent: Upstream{Address: a}, Runtime: Upstream{Address: r}, Engine: Upstream{Address: e},
		SSE:      SSEConfig{Heartbeat: time.Second, Retry: 300 * time.Millisecond},
		Security: SecurityConfig{AllowedOrigins: []string{page.URL}},
	})
	proxy := newCutter(t, strings.TrimPrefix(base, "http://"))
	gw := "http://" + proxy.ln.Addr().String()
	sid := createSession(t, base)

	ctx := browser(t)
	pageURL := page.URL + "/sse_page.html?" + url.Values{"gw": {gw}, "sid": {sid}, "msg": {orderMessage}}.Encode()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatal(err)
	}
	// Wait for the invalid first draft to be reported, then cut every
	// connection while the generation is still running.
	waitLog(t, ctx, func(log []logEntry) bool {
		for _, e := range log {
			if e.Stream == "gen" && e.Data["type"] == "debugging" {
				return true
			}
		}
		return false
	})
	proxy.cut()
	close(model.release)
	log := waitLog(t, ctx, func(log []logEntry) bool {
		ends := 0
		for _, e := range log {
			if e.Kind == "end" {
				ends++
			}
		}
		return ends == 2
	})
	checkChat(t, log)
	checkGeneration(t, log)
}

// requireChromium skips a browser test where Chromium is not installed,
// except in CI, which must run it.
func requireChromium(tb testing.TB) {
	tb.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("CI must run the browser tests, but %s is missing: %v", chromiumPath, err)
		}
		tb.Skipf("%s is not installed (apt-get install chromium)", chromiumPath)
	}
}

// browser starts headless Chromium for the test.
func browser(tb testing.TB) context.Context {
	tb.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(tb.TempDir()),
	}
	if _, err := exec.LookPath(chromiumPath); err != nil {
		tb.Fatal(err)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	tb.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

func waitLog(tb testing.TB, ctx context.Context, done func([]logEntry) bool) []logEntry {
	tb.Helper()
	for {
		log, err := chromedp.Run(ctx, chromedp.Evaluate[[]logEntry](`window.sseLog || []`))
		if err != nil {
			tb.Fatalf("reading the page's log: %v", err)
		}
		if done(log) {
			return log
		}
		select {
		case <-ctx.Done():
			raw, _ := json.Marshal(log)
			tb.Fatalf("timed out; the page saw: %s", raw)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func only(log []logEntry, stream string) []logEntry {
	var out []logEntry
	for _, e := range log {
		if e.Stream == stream {
			out = append(out, e)
		}
	}
	return out
}

// checkChat: several message events, in order, the first well before the
// stream ended (the reply streamed, it was not buffered).
func checkChat(t *testing.T, log []logEntry) {
	t.Helper()
	var msgs []logEntry
	var end logEntry
	for _, e := range only(log, "chat") {
		switch e.Kind {
		case "message":
			msgs = append(msgs, e)
		case "end":
			end = e
		}
	}
	if len(msgs) != 3 {
		t.Fatalf("chat: %d messages: %+v", len(msgs), only(log, "chat"))
	}
	var text strings.Builder
	for i, m := range msgs {
		if m.ID != fmt.Sprint(i+1) || m.Data["type"] != "message" {
			t.Errorf("chat message %d: %+v", i, m)
		}
		text.WriteString(m.Data["content"].(string))
	}
	if text.String() != "I will check each order's amount and POST the big ones." {
		t.Errorf("chat text %q", text.String())
	}
	if gap := end.T - msgs[0].T; gap < 400 {
		t.Errorf("the first message arrived only %.0fms before the end: not incremental", gap)
	}
}

// checkGeneration: the browser reconnected on its own after the cut and
// the events it saw, across both connections, are the whole log in order,
// none twice.
func checkGeneration(t *testing.T, log []logEntry) {
	t.Helper()
	var kinds, ids []string
	reconnected := false
	for _, e := range only(log, "gen") {
		switch e.Kind {
		case "connection-error":
			reconnected = true
		case "message":
			kinds = append(kinds, e.Data["type"].(string))
			ids = append(ids, e.ID)
			if e.ID != e.Data["event_id"] {
				t.Errorf("event id %q but event_id %v", e.ID, e.Data["event_id"])
			}
		}
	}
	want := "waiting start draft debugging draft debugging debugging complete"
	if got := strings.Join(kinds, " "); !reconnected || got != want {
		raw, _ := json.Marshal(only(log, "gen"))
		t.Errorf("generation events %q (reconnected %v), want %q after a reconnection; the page saw: %s", got, reconnected, want, raw)
	}
	seen := map[string]bool{}
	prev := 0
	for _, id := range ids {
		var n int
		if _, err := fmt.Sscan(id, &n); err != nil || n <= prev || seen[id] {
			t.Errorf("event ids out of order or repeated: %v", ids)
			break
		}
		seen[id], prev = true, n
	}
}
