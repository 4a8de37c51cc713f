package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 loop serves cleartext HTTP/1.1 connections itself, with
// the gateway's handler, for as long as their requests are ones it takes
// on, and hands every other connection to net/http. net/http's HTTP/1.1
// server spends a third of a REST call on its own machinery: a request
// parsed into fresh strings and maps, a goroutine per request reading in
// the background to notice a caller leaving, a response header block
// sorted and written piecewise. The loop parses a request in one
// allocation, watches for the caller leaving only once a call has run for
// a while, and writes a response in one system call. Everything else about
// the call (the edge, the policy, the REST layer, the transcoder, the
// forwarder) is the gateway's handler, unchanged.
//
// It takes on only requests it can parse without doubt: HTTP/1.1, GET,
// POST, PUT, PATCH, DELETE or OPTIONS, an origin-form target, header
// fields in the strict grammar, one Host, no Transfer-Encoding, Expect or
// Upgrade, a body (if any) declared by Content-Length that arrives with
// the head within the loop's buffer, and neither an SSE route (whose
// bridge takes the connection over) nor gRPC (whose trailers over HTTP/1.1
// net/http writes). At the first request that is anything else (a HEAD, a
// chunked body, a head over its buffer, a stray byte), it hands the
// connection to net/http, the bytes it has read replayed first, and
// net/http serves that request and the rest of the connection as it always
// has. Hostile and unusual requests therefore meet net/http's hardened
// parser, never this one.

const (
	// h1BufSize is the most of a connection the loop holds at once: a
	// request's head and body must arrive within it.
	h1BufSize = 8 << 10
	// h1WatchAfter is how long a call runs before a read watches for its
	// caller leaving. A read started for every call costs a goroutine and
	// two wake-ups, a tenth of a short call.
	h1WatchAfter = 50 * time.Millisecond
	// h1TimedWrite is the size from which a response's write runs under
	// the write timeout; anything smaller goes into the socket's buffer.
	h1TimedWrite = 16 << 10
	// h1BodyWait is how long the loop waits for the rest of a body whose
	// head has arrived, before it leaves the request to net/http.
	h1BodyWait = 100 * time.Millisecond
	// h1HoldMax is the most of a response body the writer holds before
	// it sends what it has (chunked, unless the handler set a length), so
	// that a large response streams as on net/http.
	h1HoldMax = 64 << 10
	// h1KeepBuffer bounds the response buffers a connection keeps between
	// calls: an idle connection holds little more than its read buffer.
	h1KeepBuffer = 4 << 10
)

// h1Fast is the HTTP/1.1 loop of one listener.
type h1Fast struct {
	handler http.Handler
	handoff func(net.Conn)
	logger  *slog.Logger
	// maxHeader is the server's MaxHeaderBytes.
	maxHeader int
	// headerTimeout bounds reading a request's head once it has begun,
	// idleTimeout the wait for the next request; writeTimeout a large
	// response's write making no progress.
	headerTimeout, idleTimeout, writeTimeout time.Duration

	served  atomic.Int64 // requests, for tests
	handed  atomic.Int64 // connections handed to net/http, for tests
	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*h1Conn]struct{}
}

func newH1Fast(handler http.Handler, handoff func(net.Conn), logger *slog.Logger, maxHeader int, header, idle, write time.Duration) *h1Fast {
	if maxHeader <= 0 {
		maxHeader = http.DefaultMaxHeaderBytes
	}
	return &h1Fast{handler: handler, handoff: handoff, logger: logger, maxHeader: maxHeader,
		headerTimeout: header, idleTimeout: idle, writeTimeout: write, conns: map[*h1Conn]struct{}{}}
}

// Connection states: idle between requests, when shutting down may close
// the connection; active from a request's first byte to its response's
// last.
const (
	h1Idle int32 = iota
	h1Active
	h1Closed
)

// h1Conn is one connection the loop serves.
type h1Conn struct {
	srv    *h1Fast
	conn   net.Conn
	remote string
	buf    []byte // read and not yet served; cap h1BufSize
	out    []byte // the response being written
	head   []byte // its head as of WriteHeader
	body   []byte // its body as held
	state  atomic.Int32
	first  bool // no request served yet
	// pipelined is set while a request is served with the next one
	// already read: its caller has sent on without reading.
	pipelined bool

	// The watch for a caller leaving during a long call.
	watch    *time.Timer
	mu       sync.Mutex
	cond     sync.Cond
	inCall   bool
	watching bool
	aborting bool
	gone     bool // the caller closed its side
	cancel   context.CancelFunc
	early    []byte // read by the watch: the next request's start
}

// serve serves conn, whose first bytes are prefix, until it closes or is
// handed over.
func (s *h1Fast) serve(conn net.Conn, prefix []byte) {
	c := &h1Conn{srv: s, conn: conn, remote: conn.RemoteAddr().String(), buf: make([]byte, 0, h1BufSize), first: true}
	c.buf = append(c.buf, prefix...)
	c.cond.L = &c.mu
	c.state.Store(h1Active)
	if !s.track(c, true) {
		_ = conn.Close()
		return
	}
	handed := c.loop()
	s.track(c, false)
	if c.watch != nil {
		c.watch.Stop()
	}
	if handed {
		s.handed.Add(1)
		_ = conn.SetReadDeadline(time.Time{})
		s.handoff(&replayConn{Conn: conn, prefix: c.buf, h1: true})
		return
	}
	_ = conn.Close()
}

// track adds or removes c from the open connections; it refuses to add
// once shutting down.
func (s *h1Fast) track(c *h1Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !add {
		delete(s.conns, c)
		return true
	}
	if s.closing.Load() {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

// loop serves requests until the connection ends (false) or is to be
// handed over (true) with c.buf unserved.
func (c *h1Conn) loop() bool {
	for {
		req, n, verdict := c.next()
		switch verdict {
		case h1End:
			return false
		case h1Foreign:
			return true
		}
		c.pipelined = len(c.buf) > n
		keep := c.serveRequest(&req)
		c.buf = c.buf[:copy(c.buf, c.buf[n:])]
		c.buf = append(c.buf, c.early...)
		c.early = c.early[:0]
		c.first = false
		if !keep {
			return false
		}
	}
}

type h1Verdict int

const (
	h1Parsed  h1Verdict = iota
	h1Partial           // more bytes needed
	h1Body              // a whole head, and more of its body needed
	h1Foreign           // for net/http
	h1End               // the connection is done
)

// next reads until c.buf starts with a whole request it serves, or the
// connection is to be handed over or closed.
func (c *h1Conn) next() (h1Request, int, h1Verdict) {
	var started, bodyWait time.Time
	for {
		verdict := h1Partial
		if len(c.buf) > 0 {
			var req h1Request
			var n int
			req, n, verdict = parseH1(c.buf)
			if verdict != h1Foreign && verdict != h1Partial && req.headLen > c.srv.maxHeader {
				verdict = h1Foreign // net/http's to refuse, with its 431
			}
			switch verdict {
			case h1Parsed, h1Foreign:
				return req, n, verdict
			case h1Body:
				if bodyWait.IsZero() {
					bodyWait = time.Now().Add(h1BodyWait)
				}
			}
			if len(c.buf) == cap(c.buf) {
				return req, 0, h1Foreign
			}
		}
		var deadline time.Time
		switch {
		case verdict == h1Body:
			deadline = bodyWait
		case len(c.buf) > 0:
			if started.IsZero() {
				started = time.Now()
			}
			if c.srv.headerTimeout > 0 {
				deadline = started.Add(c.srv.headerTimeout)
			}
		case c.first && c.srv.headerTimeout > 0:
			deadline = time.Now().Add(c.srv.headerTimeout)
		case !c.first && c.srv.idleTimeout > 0:
			deadline = time.Now().Add(c.srv.idleTimeout)
		}
		if len(c.buf) == 0 && (c.srv.closing.Load() || !c.state.CompareAndSwap(h1Active, h1Idle)) {
			return h1Request{}, 0, h1End
		}
		_ = c.conn.SetReadDeadline(deadline)
		n, err := c.conn.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+n]
		if c.state.Load() != h1Active && !c.state.CompareAndSwap(h1Idle, h1Active) {
			return h1Request{}, 0, h1End // closed by a shutdown
		}
		switch {
		case err == nil:
		case n > 0:
			// Parse what came; the error comes back on the next read.
		case verdict == h1Body && errors.Is(err, os.ErrDeadlineExceeded):
			// A body that trickles in is net/http's to read, under the
			// body read timeout.
			return h1Request{}, 0, h1Foreign
		default:
			return h1Request{}, 0, h1End
		}
	}
}

// h1Request is a request's head as parsed, its strings slices of one
// string holding the head.
type h1Request struct {
	method string
	target string
	// url is the target parsed, nil for a plain path (the target itself).
	url    *url.URL
	host   string
	header http.Header
	body   []byte // within the connection's buffer
	close  bool
	// headLen is the length of the request line and header fields.
	headLen int
}

// path is the request's path, as net/http would give it.
func (r *h1Request) path() string {
	if r.url != nil {
		return r.url.Path
	}
	return r.target
}

const h1Proto = " HTTP/1.1\r\n"

// h1Methods are the methods the loop serves, with the request line's start
// for each. HEAD (a body counted but not sent), CONNECT and the rest are
// net/http's.
var h1Methods = [...]string{http.MethodPost, http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions}

// h1Method returns the method data starts with, followed by a space; ""
// with partial set when data may still become one.
func h1Method(data []byte) (method string, partial bool) {
	for _, m := range h1Methods {
		switch {
		case len(data) > len(m) && string(data[:len(m)]) == m && data[len(m)] == ' ':
			return m, false
		case len(data) <= len(m) && string(data) == m[:len(data)]:
			partial = true
		}
	}
	return "", partial
}

// parseH1 parses the request at the start of data. It answers h1Parsed
// with the request and its length when it is one the loop serves, whole;
// h1Partial when data may be the start of one; h1Body when it is one
// whose body has not all arrived; h1Foreign otherwise.
func parseH1(data []byte) (h1Request, int, h1Verdict) {
	var req h1Request
	method, partial := h1Method(data)
	switch {
	case method == "" && partial:
		return req, 0, h1Partial
	case method == "":
		return req, 0, h1Foreign
	}
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if bareLineEnd(data) {
			return req, 0, h1Foreign // net/http's to judge
		}
		return req, 0, h1Partial
	}
	head := string(data[:end+2]) // the one allocation for the head's strings
	line, rest, _ := strings.Cut(head, "\r\n")
	target, ok := strings.CutSuffix(line[len(method)+1:]+"\r\n", h1Proto)
	if !ok || !validTarget(target) {
		return req, 0, h1Foreign
	}
	req.method, req.target = method, target
	if !plainPath(target) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return req, 0, h1Foreign
		}
		req.url = u
	}
	if ssePaths[req.path()] {
		// The SSE bridge takes its connection over from net/http.
		return req, 0, h1Foreign
	}
	fields := strings.Count(rest, "\r\n")
	req.header = make(http.Header, fields)
	values := make([]string, fields)
	contentLength, hosts := -1, 0
	for i := 0; rest != ""; i++ {
		var field string
		field, rest, _ = strings.Cut(rest, "\r\n")
		name, value, ok := strings.Cut(field, ":")
		if !ok || name == "" || !validFieldName(name) {
			return req, 0, h1Foreign
		}
		if !validFieldValue(value) { // before trimming, which takes line ends too
			return req, 0, h1Foreign
		}
		value = textproto.TrimString(value)
		key := canonicalName(name)
		switch key {
		case "Host":
			hosts++
			if hosts > 1 || !httpguts.ValidHostHeader(value) {
				return req, 0, h1Foreign
			}
			req.host = value
			continue // net/http moves it to Request.Host
		case "Content-Length":
			if contentLength >= 0 {
				return req, 0, h1Foreign
			}
			if contentLength = plainLength(value); contentLength < 0 {
				return req, 0, h1Foreign
			}
		case "Connection":
			switch strings.ToLower(value) {
			case "close":
				req.close = true
			case "keep-alive":
			default:
				return req, 0, h1Foreign
			}
		case "Content-Type":
			// gRPC's trailers over HTTP/1.1 are net/http's to write.
			if ct := strings.ToLower(value); strings.HasPrefix(ct, "application/grpc") && !strings.HasPrefix(ct, "application/grpc-web") {
				return req, 0, h1Foreign
			}
		case "Transfer-Encoding", "Expect", "Upgrade", "Pragma", "Te", "Trailer":
			// Framing, interim responses and net/http's rewrites of
			// Pragma are net/http's.
			return req, 0, h1Foreign
		}
		values[i] = value
		if prev, ok := req.header[key]; ok {
			req.header[key] = append(prev, value)
			continue
		}
		req.header[key] = values[i : i+1 : i+1]
	}
	if hosts != 1 {
		return req, 0, h1Foreign
	}
	contentLength = max(contentLength, 0) // none: no body
	bodyStart := end + 4
	req.headLen = bodyStart
	if bodyStart+contentLength > h1BufSize {
		return req, 0, h1Foreign
	}
	if len(data)-bodyStart < contentLength {
		return req, 0, h1Body
	}
	req.body = data[bodyStart : bodyStart+contentLength]
	return req, bodyStart + contentLength, h1Parsed
}

// validTarget allows an origin-form target of visible ASCII without a
// fragment: absolute-form, "*" and anything else are net/http's.
func validTarget(t string) bool {
	if t == "" || t[0] != '/' {
		return false
	}
	for i := range len(t) {
		if c := t[i]; c <= ' ' || c >= 0x7f || c == '#' {
			return false
		}
	}
	return true
}

// bareLineEnd reports a line feed without its carriage return, or a
// carriage return followed by anything but a line feed.
func bareLineEnd(data []byte) bool {
	for i, c := range data {
		switch {
		case c == '\n' && (i == 0 || data[i-1] != '\r'):
			return true
		case c == '\r' && i+1 < len(data) && data[i+1] != '\n':
			return true
		}
	}
	return false
}

// plainPath reports a path of unreserved characters and slashes only: one
// that needs no unescaping, the URL net/http would parse from it.
func plainPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	for i := range len(p) {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("/-._~", c) >= 0) {
			return false
		}
	}
	return true
}

func validFieldName(name string) bool {
	for i := range len(name) {
		if !httpguts.IsTokenRune(rune(name[i])) {
			return false
		}
	}
	return true
}

// validFieldValue allows visible ASCII, spaces and tabs: net/http also
// takes other bytes, and is left to.
func validFieldValue(v string) bool {
	for i := range len(v) {
		if c := v[i]; (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// plainLength parses a Content-Length of at most seven digits, -1 if it is
// anything else.
func plainLength(v string) int {
	if v == "" || len(v) > 7 {
		return -1
	}
	n := 0
	for i := range len(v) {
		if v[i] < '0' || v[i] > '9' {
			return -1
		}
		n = n*10 + int(v[i]-'0')
	}
	return n
}

// h1Call is what one request takes, in one allocation: the URL is its own
// when the target is a plain path.
type h1Call struct {
	w    h1Writer
	url  url.URL
	body bufferedBody
}

// serveRequest serves req and reports whether the connection stays open.
func (c *h1Conn) serveRequest(req *h1Request) (keep bool) {
	c.srv.served.Add(1)
	call := new(h1Call)
	u := req.url
	if u == nil {
		call.url.Path = req.target
		u = &call.url
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := (&http.Request{
		Method:     req.method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     req.header,
		Body:       http.NoBody,
		Host:       req.host,
		RemoteAddr: c.remote,
		RequestURI: req.target,
		Close:      req.close,
	}).WithContext(ctx)
	if len(req.body) > 0 {
		// The connection's buffer is reused for the next request.
		call.body.set(bytes.Clone(req.body))
		r.Body = &call.body
		r.ContentLength = int64(len(req.body))
	}
	w := &call.w
	w.conn, w.header, w.body = c, http.Header{}, c.body[:0]
	w.closeAfter = req.close

	c.startWatch(cancel)
	panicked := c.run(w, r)
	c.endWatch()
	if !panicked {
		w.finish()
	}
	cancel()
	c.head, c.body = w.head[:0], w.body[:0]
	if cap(c.out) > h1KeepBuffer || cap(c.body) > h1KeepBuffer || cap(c.head) > h1KeepBuffer {
		c.out, c.body, c.head = nil, nil, nil
	}
	return !panicked && !w.closeAfter && w.err == nil && !c.gone && !c.srv.closing.Load()
}

// run calls the handler, recovering a panic as net/http does: the
// connection is closed without a response.
func (c *h1Conn) run(w *h1Writer, r *http.Request) (panicked bool) {
	defer func() {
		if err := recover(); err != nil {
			panicked = true
			if err != http.ErrAbortHandler { //nolint:errorlint // net/http compares it so
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.logger.Error("panic serving a request", slog.String("remote", c.remote),
					slog.String("panic", fmt.Sprint(err)), slog.String("stack", string(buf)))
			}
		}
	}()
	c.srv.handler.ServeHTTP(w, r)
	return false
}

// startWatch arms the watch for the caller leaving during the call.
func (c *h1Conn) startWatch(cancel context.CancelFunc) {
	c.mu.Lock()
	c.inCall, c.cancel = true, cancel
	c.mu.Unlock()
	if c.watch == nil {
		c.watch = time.AfterFunc(h1WatchAfter, c.watchRead)
		return
	}
	c.watch.Reset(h1WatchAfter)
}

// watchRead reads from the connection while a long call runs: a caller
// that closes its side cancels the call; a byte that arrives instead is
// the next request's, kept for it.
func (c *h1Conn) watchRead() {
	c.mu.Lock()
	if !c.inCall || c.watching {
		c.mu.Unlock()
		return
	}
	c.watching = true
	cancel := c.cancel
	// Under the lock, so that an endWatch's deadline comes after it.
	_ = c.conn.SetReadDeadline(time.Time{})
	c.mu.Unlock()
	var b [1]byte
	n, err := c.conn.Read(b[:])
	c.mu.Lock()
	defer c.mu.Unlock()
	c.early = append(c.early, b[:n]...)
	if err != nil && !c.aborting {
		c.gone = true
		cancel()
	}
	c.watching = false
	c.cond.Broadcast()
}

// endWatch stops the watch, ending a read under way.
func (c *h1Conn) endWatch() {
	c.watch.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inCall = false
	if c.watching {
		c.aborting = true
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
		for c.watching {
			c.cond.Wait()
		}
		c.aborting = false
	}
}

// stop shuts the loop down: idle connections close now, busy ones after
// their response. It waits for them until ctx ends and returns how many
// are still open, for closeAll to cut.
func (s *h1Fast) stop(ctx context.Context) int {
	if s == nil {
		return 0
	}
	s.closing.Store(true)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		busy := 0
		for c := range s.conns {
			if c.state.CompareAndSwap(h1Idle, h1Closed) {
				_ = c.conn.Close()
			} else if c.state.Load() == h1Active {
				busy++
			}
		}
		s.mu.Unlock()
		if busy == 0 {
			return 0
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return busy
		}
	}
}

// closeAll closes every connection still open, which cancels their calls.
func (s *h1Fast) closeAll() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.conn.Close()
	}
}

// h1Writer is the response writer of a request the loop serves. It holds
// the response whole and writes it in one system call when the handler
// returns; a Flush sends what it has, chunked.
type h1Writer struct {
	conn        *h1Conn
	header      http.Header
	status      int
	wroteHeader bool
	// head is the status line and the handler's fields as they were at
	// WriteHeader, which later changes do not reach; the fields that
	// frame the response are added when it goes out, from what
	// WriteHeader noted of them.
	head                    []byte
	hasType, hasDate, hasCE bool
	connection              []string // the handler's Connection field
	body                    []byte   // held since the last flush
	written                 int64
	flushed                 bool // the head is on the wire
	chunked                 bool
	noBody                  bool
	// contentLength is the handler's, -1 when it set none.
	contentLength int64
	closeAfter    bool
	err           error
}

func (w *h1Writer) Header() http.Header { return w.header }

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.interim(code)
		return
	}
	h := w.header
	w.wroteHeader, w.status = true, code
	w.noBody = !bodyAllowedForStatus(code)
	w.contentLength = -1
	if v := h.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.contentLength = n
		}
	}
	_, w.hasType = h["Content-Type"]
	_, w.hasDate = h["Date"]
	w.hasCE = h.Get("Content-Encoding") != ""
	w.connection = slices.Clone(h["Connection"])
	w.head = appendStatusLine(w.conn.head[:0], code)
	w.head = appendHeader(w.head, h, func(k string) bool {
		switch k {
		case "Connection", "Content-Length", "Transfer-Encoding":
			return true
		case "Content-Type":
			return code == http.StatusNotModified
		}
		return false
	})
}

// interim writes a 1xx response at once, as net/http does.
func (w *h1Writer) interim(code int) {
	out := appendStatusLine(nil, code)
	out = appendHeader(out, w.header, nil)
	out = append(out, "\r\n"...)
	w.writeConn(out)
}

func (w *h1Writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		return 0, http.ErrBodyNotAllowed
	}
	if w.contentLength >= 0 && w.written+int64(len(p)) > w.contentLength {
		return 0, http.ErrContentLength
	}
	w.written += int64(len(p))
	w.body = append(w.body, p...)
	if len(w.body) > h1HoldMax {
		if err := w.FlushError(); err != nil {
			return len(p), err
		}
	}
	return len(p), nil
}

// FlushError sends the head and what is held, which then goes chunked
// unless the handler declared its length.
func (w *h1Writer) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	out := w.conn.out[:0]
	if !w.flushed {
		w.flushed = true
		w.chunked = !w.noBody && w.contentLength < 0
		out = w.appendHead(out, -1)
	}
	out = w.appendBody(out)
	w.conn.out = out
	w.writeConn(out)
	return w.err
}

func (w *h1Writer) Flush() { _ = w.FlushError() }

// SetWriteDeadline lets the edge's stall timer end a flush under way.
func (w *h1Writer) SetWriteDeadline(t time.Time) error { return w.conn.conn.SetWriteDeadline(t) }

// finish writes what the handler left.
func (w *h1Writer) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return
	}
	if w.contentLength >= 0 && w.written != w.contentLength {
		// A short body: the caller cannot tell where it ends.
		w.closeAfter = true
	}
	out := w.conn.out[:0]
	if !w.flushed {
		length := int64(len(w.body))
		if w.noBody {
			length = -1
		}
		out = w.appendHead(out, length)
	}
	out = w.appendBody(out)
	if w.chunked {
		out = append(out, "0\r\n\r\n"...)
	}
	w.conn.out = out
	if len(out) > 0 {
		w.writeConn(out)
	}
}

// appendHead appends the head WriteHeader made and the fields net/http
// would add to it. length is the Content-Length to add when the handler
// set none, -1 for none.
func (w *h1Writer) appendHead(out []byte, length int64) []byte {
	connClose := false
	for _, v := range w.connection {
		connClose = connClose || hasToken(v, "close")
	}
	if len(w.connection) > 0 && w.connection[0] == "close" {
		w.closeAfter = true
	}
	if w.conn.srv.closing.Load() || w.conn.gone {
		w.closeAfter = true
	}
	out = append(out, w.head...)
	switch {
	case w.closeAfter && !connClose:
		out = append(out, "Connection: close\r\n"...)
	default:
		out = appendField(out, "Connection", w.connection)
	}
	switch {
	case w.noBody || w.chunked:
	case w.contentLength >= 0:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, w.contentLength, 10)
		out = append(out, "\r\n"...)
	case length >= 0:
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, length, 10)
		out = append(out, "\r\n"...)
	}
	if !w.hasType && !w.noBody && !w.hasCE && len(w.body) > 0 {
		out = append(out, "Content-Type: "...)
		out = append(out, http.DetectContentType(w.body)...)
		out = append(out, "\r\n"...)
	}
	if !w.hasDate {
		out = append(out, "Date: "...)
		out = appendDate(out)
		out = append(out, "\r\n"...)
	}
	if w.chunked {
		out = append(out, "Transfer-Encoding: chunked\r\n"...)
	}
	return append(out, "\r\n"...)
}

// appendBody appends what is held, as a chunk when chunked, and empties
// the hold.
func (w *h1Writer) appendBody(out []byte) []byte {
	if len(w.body) == 0 {
		return out
	}
	if w.chunked {
		out = strconv.AppendInt(out, int64(len(w.body)), 16)
		out = append(out, "\r\n"...)
		out = append(out, w.body...)
		out = append(out, "\r\n"...)
	} else {
		out = append(out, w.body...)
	}
	w.body = w.body[:0]
	return out
}

// writeConn writes out to the connection; a large one in pieces, each of
// which must make progress within the write timeout. A small one fits in
// the socket's buffer, which holds the previous answers only if the
// caller pipelines requests without reading them: that write is timed
// too.
func (w *h1Writer) writeConn(out []byte) {
	conn := w.conn.conn
	if (len(out) < h1TimedWrite && !w.conn.pipelined) || w.conn.srv.writeTimeout <= 0 {
		_, w.err = conn.Write(out)
		return
	}
	for len(out) > 0 && w.err == nil {
		_ = conn.SetWriteDeadline(time.Now().Add(w.conn.srv.writeTimeout))
		n := min(len(out), stallChunk)
		_, w.err = conn.Write(out[:n])
		out = out[n:]
	}
	_ = conn.SetWriteDeadline(time.Time{})
}

func appendStatusLine(out []byte, code int) []byte {
	out = append(out, "HTTP/1.1 "...)
	if text := http.StatusText(code); text != "" {
		out = strconv.AppendInt(out, int64(code), 10)
		out = append(out, ' ')
		out = append(out, text...)
	} else {
		out = fmt.Appendf(out, "%03d status code %d", code, code)
	}
	return append(out, "\r\n"...)
}

// headerNewlines are what net/http turns into spaces in header values.
var headerNewlines = strings.NewReplacer("\n", " ", "\r", " ")

// appendHeader appends h's fields as net/http writes them, leaving out
// the keys skip names and fields whose names are not valid.
func appendHeader(out []byte, h http.Header, skip func(string) bool) []byte {
	for k, vs := range h {
		if (skip != nil && skip(k)) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		out = appendField(out, k, vs)
	}
	return out
}

// appendField appends a field's lines, one a value.
func appendField(out []byte, k string, vs []string) []byte {
	for _, v := range vs {
		if strings.ContainsAny(v, "\r\n") {
			v = headerNewlines.Replace(v)
		}
		out = append(out, k...)
		out = append(out, ": "...)
		out = append(out, textproto.TrimString(v)...)
		out = append(out, "\r\n"...)
	}
	return out
}

func bodyAllowedForStatus(status int) bool {
	switch {
	case status >= 100 && status <= 199, status == http.StatusNoContent, status == http.StatusNotModified:
		return false
	}
	return true
}

func hasToken(v, token string) bool {
	for part := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(part), token) {
			return true
		}
	}
	return false
}

// dateCache is the Date header's value, formatted once a second.
var dateCache atomic.Pointer[cachedDate]

type cachedDate struct {
	sec  int64
	text []byte
}

func appendDate(out []byte) []byte {
	now := time.Now()
	d := dateCache.Load()
	if d == nil || d.sec != now.Unix() {
		d = &cachedDate{sec: now.Unix(), text: now.UTC().AppendFormat(nil, http.TimeFormat)}
		dateCache.Store(d)
	}
	return append(out, d.text...)
}
