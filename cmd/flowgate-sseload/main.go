// Command flowgate-sseload measures the gateway under many concurrent
// Server-Sent Events streams: the gateway's resident memory per open
// stream and the latency of events on them.
//
// It runs the reference backends in its own process, starts the gateway
// binary as a separate process pointed at them (so the gateway's memory is
// measured alone), opens -streams generation streams spread over -sessions
// sessions, holds them past a heartbeat, then sends one chat message per
// session and times the generation events that message causes on every
// stream watching the session.
//
//	go build -o /tmp/flowgate ./cmd/flowgate
//	go run ./cmd/flowgate-sseload -flowgate /tmp/flowgate -streams 5000
//
// Without -flowgate it runs its own copy of the gateway and also reports the
// live heap and goroutine stacks per stream after a forced GC (independent
// of GOGC and GOMEMLIMIT), and with -profile-dir saves a heap profile and a
// goroutine dump. With -auth every call carries an API key that the gateway
// checks. sse/README.md has the numbers.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowgate/flowgate/backends"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	run := run
	if len(os.Args) > 1 && os.Args[1] == serveGatewayFlag {
		run = func(ctx context.Context, args []string, _, stderr io.Writer) error {
			return serveGateway(ctx, args[1:], stderr)
		}
	}
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "flowgate-sseload:", err)
		os.Exit(1)
	}
}

type options struct {
	flowgate  string
	profile   string
	streams   int
	sessions  int
	hold      time.Duration
	heartbeat time.Duration
	parallel  int
	auth      bool
	apiKey    string // with auth: the key callers send
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgate-sseload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{}
	fs.StringVar(&o.flowgate, "flowgate", "", "path of the flowgate binary (go build ./cmd/flowgate); empty runs this binary's own copy of the gateway, which also reports live heap and stacks")
	fs.StringVar(&o.profile, "profile-dir", "", "with no -flowgate: write the gateway's heap profile and goroutine dump here while the streams are open")
	fs.IntVar(&o.streams, "streams", 5000, "concurrent SSE streams to hold")
	fs.IntVar(&o.sessions, "sessions", 50, "sessions the streams watch")
	fs.DurationVar(&o.hold, "hold", 20*time.Second, "how long to hold the streams open before sending events")
	fs.DurationVar(&o.heartbeat, "heartbeat", 15*time.Second, "the gateway's SSE heartbeat interval")
	fs.IntVar(&o.parallel, "parallel", 200, "streams opened at once")
	fs.BoolVar(&o.auth, "auth", false, "require an API key of every call (X-Api-Key), as a production gateway would, so that authentication is part of what is measured")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.streams <= 0 || o.sessions <= 0 {
		return errors.New("-streams and -sessions must be positive")
	}
	if o.auth {
		key := make([]byte, 16)
		_, _ = rand.Read(key)
		o.apiKey = hex.EncodeToString(key)
	}
	dir, err := os.MkdirTemp("", "flowgate-sseload")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	ls, err := backends.LoopbackListeners()
	if err != nil {
		return err
	}
	b, err := backends.Start(ctx, backends.Config{DataDir: dir, PublicURL: "http://127.0.0.1"}, ls)
	if err != nil {
		return err
	}
	defer func() { _ = b.Shutdown(context.WithoutCancel(ctx)) }()
	gw, err := startGateway(ctx, o, b, stderr)
	if err != nil {
		return err
	}
	defer gw.stop()
	return measure(ctx, o, gw, stdout)
}

// gateway is the gateway process under test.
type gateway struct {
	cmd   *exec.Cmd
	base  string
	debug string // the child gateway's debug listener, "" for -flowgate
}

func startGateway(ctx context.Context, o options, b *backends.Backends, stderr io.Writer) (*gateway, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	agent, runtime, engine := b.Addrs()
	binary, debug := o.flowgate, ""
	var args []string
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return nil, err
		}
		if debug, err = freeAddr(); err != nil {
			return nil, err
		}
		args = selfGatewayArgs(addr, debug, agent, runtime, engine, o.heartbeat)
		args = append(args, "-api-keys", apiKeys(o.apiKey))
	} else {
		// One load client holds every stream from one address and key.
		args = []string{"-listen", addr, "-sse-heartbeat", o.heartbeat.String(), "-log-format", "text",
			"-max-conns-per-ip", "-1", "-max-streams-per-caller", "-1"}
		for name, a := range map[string]string{"agent": agent, "runtime": runtime, "engine": engine} {
			host, port, _ := net.SplitHostPort(a)
			args = append(args, "-"+name+"-host", host, "-"+name+"-port", port)
		}
		if o.apiKey != "" {
			args = append(args, "-api-keys", apiKeys(o.apiKey))
		}
	}
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Stderr = io.Discard
	cmd.Stdout = stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	g := &gateway{cmd: cmd, base: "http://" + addr}
	if debug != "" {
		g.debug = "http://" + debug
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get(g.base + "/health"); err == nil {
			_ = resp.Body.Close()
			return g, nil
		}
	}
	g.stop()
	return nil, errors.New("the gateway did not become healthy")
}

// apiKeys is the gateway's -api-keys value accepting key ("" for none):
// one tenant, allowed to chat with the agent.
func apiKeys(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:]) + ":load:load:agent:chat"
}

// withAPIKey sends an API key with every request.
type withAPIKey struct {
	key  string
	next http.RoundTripper
}

func (t withAPIKey) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.key == "" {
		return t.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("X-Api-Key", t.key)
	return t.next.RoundTrip(r)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (g *gateway) stop() {
	_ = g.cmd.Process.Signal(os.Interrupt)
	_ = g.cmd.Wait()
}

// rss is the gateway's resident memory in KiB, from /proc.
func (g *gateway) rss() (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, errors.New("no VmRSS")
}

// watcher is one open stream; it reports the arrival of each event.
type watcher struct {
	session string
	events  chan time.Time
}

func measure(ctx context.Context, o options, gw *gateway, out io.Writer) error {
	client := &http.Client{Transport: withAPIKey{key: o.apiKey, next: &http.Transport{MaxIdleConnsPerHost: o.parallel, MaxConnsPerHost: 0}}}
	sessions := make([]string, o.sessions)
	for i := range sessions {
		id, err := createSession(ctx, client, gw.base)
		if err != nil {
			return err
		}
		sessions[i] = id
	}
	before, err := gw.rss()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "gateway RSS before: %d KiB\n", before)
	liveBefore, liveErr := gw.memStats(ctx)

	var (
		mu       sync.Mutex
		firsts   []time.Duration
		watchers []*watcher
		failed   atomic.Int64
		firstErr atomic.Pointer[error]
		beats    atomic.Int64
		sem      = make(chan struct{}, o.parallel)
		wg       sync.WaitGroup
	)
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for i := range o.streams {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &watcher{session: sessions[i%len(sessions)], events: make(chan time.Time, 16)}
			opened := time.Now()
			first := make(chan struct{})
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				err := w.read(streamCtx, client, gw.base, first, &beats)
				if err != nil && streamCtx.Err() == nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				}
			}()
			select {
			case <-first:
				mu.Lock()
				firsts = append(firsts, time.Since(opened))
				watchers = append(watchers, w)
				mu.Unlock()
			case <-ended:
			case <-time.After(30 * time.Second):
				failed.Add(1)
			}
			<-sem
		}()
	}
	wg.Wait()
	fmt.Fprintf(out, "opened %d streams in %v (%d failed); time to first event %s\n",
		len(watchers), time.Since(start).Round(time.Millisecond), failed.Load(), summary(firsts))
	if err := firstErr.Load(); err != nil {
		fmt.Fprintf(out, "first failure: %v\n", *err)
	}
	time.Sleep(2 * time.Second)
	open, err := gw.rss()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "gateway RSS with %d open streams: %d KiB (+%d KiB, %.1f KiB per stream)\n",
		len(watchers), open, open-before, float64(open-before)/float64(max(1, len(watchers))))
	if liveErr == nil {
		if liveOpen, err := gw.memStats(ctx); err == nil {
			n := float64(max(1, len(watchers)))
			fmt.Fprintf(out, "gateway live memory after GC with %d open streams: heap in use +%.1f KiB, stacks +%.1f KiB, together %.1f KiB per stream; %.2f goroutines per stream\n",
				len(watchers), float64(liveOpen.HeapInuse-liveBefore.HeapInuse)/1024/n, float64(liveOpen.StackInuse-liveBefore.StackInuse)/1024/n,
				(float64(liveOpen.live())-float64(liveBefore.live()))/1024/n, float64(liveOpen.Goroutines-liveBefore.Goroutines)/n)
		}
		if err := gw.saveProfiles(ctx, o.profile, "open"); err != nil {
			fmt.Fprintf(out, "could not save profiles: %v\n", err)
		}
	}

	time.Sleep(o.hold)
	held, _ := gw.rss()
	fmt.Fprintf(out, "after holding %v: RSS %d KiB (%.1f KiB per stream), %d heartbeats received, %d streams failed\n",
		o.hold, held, float64(held-before)/float64(max(1, len(watchers))), beats.Load(), failed.Load())

	lat := fanout(ctx, client, gw.base, sessions, watchers)
	fmt.Fprintf(out, "event latency (chat request sent -> generation 'start' event at each watcher): %s\n", summary(lat))
	return nil
}

// fanout sends a chat message to every session and times the next event
// on each of its watchers.
func fanout(ctx context.Context, client *http.Client, base string, sessions []string, watchers []*watcher) []time.Duration {
	bySession := map[string][]*watcher{}
	for _, w := range watchers {
		bySession[w.session] = append(bySession[w.session], w)
	}
	var (
		mu  sync.Mutex
		lat []time.Duration
		wg  sync.WaitGroup
	)
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sent := time.Now()
			chatURL := base + "/api/v1/chat/stream?" + url.Values{"session_id": {s}, "user_message": {"When a webhook receives an order over 100, POST it to https://example.com/orders"}}.Encode()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, chatURL, nil)
			if resp, err := client.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
			for _, w := range bySession[s] {
				select {
				case at := <-w.events:
					mu.Lock()
					lat = append(lat, at.Sub(sent))
					mu.Unlock()
				case <-time.After(30 * time.Second):
				}
			}
		}()
	}
	wg.Wait()
	return lat
}

func (w *watcher) read(ctx context.Context, client *http.Client, base string, first chan struct{}, beats *atomic.Int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/workflow_generation?session_id="+w.session, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	seen := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			beats.Add(1)
		case strings.HasPrefix(line, "data:"):
			if !seen {
				seen = true
				close(first)
				continue
			}
			select {
			case w.events <- time.Now():
			default:
			}
		}
	}
	return sc.Err()
}

func createSession(ctx context.Context, client *http.Client, base string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/session", strings.NewReader(`{"action":"create"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		SessionID string `json:"session_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.SessionID == "" {
		return "", fmt.Errorf("create session: HTTP %d: %v", resp.StatusCode, err)
	}
	return out.SessionID, nil
}

func summary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration {
		return ds[min(len(ds)-1, int(p*float64(len(ds))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("n=%d p50=%v p90=%v p99=%v max=%v", len(ds), q(0.5), q(0.9), q(0.99), ds[len(ds)-1].Round(10*time.Microsecond))
}
