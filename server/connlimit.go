package server

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/rs/cors"
	"golang.org/x/net/http2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowgate/flowgate/interceptors"
)

// connLimitListener caps the connections open at once from one client
// address. Past the cap a new connection is refused as soon as it is
// accepted, before a server spends a goroutine or a buffer on it. IPv6
// callers are counted by /64, the block one host usually holds; trusted
// proxies, which carry many callers each, are not counted.
//
// A refused cleartext connection is answered rather than reset: closed
// unread, it would reset its caller's request, and the caller could not
// tell whether the call was served. Its first request's head is read
// and answered in that request's protocol with 429 RATE_LIMITED
// (ResourceExhausted) and Retry-After; an HTTP/2 caller gets a GOAWAY
// that says no stream was processed, which gRPC clients retry on a new
// connection. Answering is bounded: at most refuseAnswers at once, each
// for refuseWait; past that a refused connection is closed unanswered.
type connLimitListener struct {
	net.Listener
	open    *interceptors.Tally[netip.Addr]
	proxies *interceptors.ProxyTrust
	logger  *slog.Logger
	// lastWarn throttles the log line about refused connections.
	lastWarn atomic.Int64
	// answers holds a place for each refused connection being answered;
	// nil closes them unanswered (TLS listeners: an answer would need a
	// handshake).
	answers chan struct{}
	errs    errorWriter
	stream  streamRefusal
	cors    *cors.Cors // nil: none
	// refused counts refused connections; nil counts nothing.
	refused func()
}

// streamRefusal answers r with err if r opens an SSE stream, and says
// whether it did.
type streamRefusal func(w http.ResponseWriter, r *http.Request, err error) bool

const (
	// refuseAnswers bounds the refused connections answered at once, so
	// that a flood of them costs a few goroutines, not one each.
	refuseAnswers = 256
	// refuseWait is all the time a refused connection is given to send
	// its request's head and to read the answer.
	refuseWait = time.Second
	// refuseHead bounds what is read of a refused connection's request.
	refuseHead = 8 << 10
)

// limitListener wraps ln with the per-address connection cap, if any;
// answer says whether refused connections are answered (cleartext).
func (s *security) limitListener(ln net.Listener, answer bool) net.Listener {
	if s.cfg.MaxConnsPerIP <= 0 {
		return ln
	}
	l := &connLimitListener{Listener: ln, open: interceptors.NewTally[netip.Addr](s.cfg.MaxConnsPerIP),
		proxies: s.proxies, logger: s.logger, errs: s.errs, stream: s.refuseStream, cors: s.cors, refused: s.connRefused}
	if answer {
		l.answers = make(chan struct{}, refuseAnswers)
	}
	return l
}

func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := interceptors.ParseRemoteAddr(conn.RemoteAddr().String())
		if !addr.IsValid() || l.proxies.Trusts(addr) {
			return conn, nil
		}
		key := connKey(addr)
		if l.open.Acquire(key) {
			return &limitedConn{Conn: conn, release: func() { l.open.Release(key) }}, nil
		}
		l.refuse(conn)
		l.warn(addr)
	}
}

// refuse answers conn in a goroutine of its own, when a place is free.
func (l *connLimitListener) refuse(conn net.Conn) {
	if l.refused != nil {
		l.refused()
	}
	select {
	case l.answers <- struct{}{}: // a nil channel never takes one
	default:
		_ = conn.Close()
		return
	}
	go func() {
		defer func() { <-l.answers }()
		l.answerRefused(conn)
	}()
}

// answerRefused reads the start of a refused connection, answers it and
// closes it once the caller has had the answer.
func (l *connLimitListener) answerRefused(conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(refuseWait))
	buf := make([]byte, 0, refuseHead)
	for !headRead(buf) && len(buf) < cap(buf) {
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	if len(buf) == 0 {
		return
	}
	msg := fmt.Sprintf("too many open connections from this address (limit %d); close one or retry later", l.open.Max())
	if bytes.HasPrefix(buf, []byte(h2Preface)) {
		fr := http2.NewFramer(conn, nil)
		_ = fr.WriteSettings()
		// Last stream 0: nothing was processed, so every call may be
		// retried.
		_ = fr.WriteGoAway(0, http2.ErrCodeEnhanceYourCalm, []byte(msg))
	} else {
		_, _ = conn.Write(l.refusalAnswer(buf, msg))
	}
	// Closed with the request unread, the socket would be reset, and the
	// reset can overtake the answer: stop sending, and read until the
	// caller closes or the time is up.
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, maxSniffBytes))
}

// headRead says whether buf holds the HTTP/2 preface or a whole HTTP/1.x
// request head.
func headRead(buf []byte) bool {
	if len(buf) < len(h2Preface) && bytes.HasPrefix([]byte(h2Preface), buf) {
		return false
	}
	return bytes.HasPrefix(buf, []byte(h2Preface)) || bytes.Contains(buf, []byte("\r\n\r\n"))
}

// refusalAnswer is the HTTP/1.1 response to a refused connection whose
// request starts with head: the request's protocol's shape of a rate-limit
// error (the contract's for REST and for a head that cannot be parsed; for
// an SSE stream, one that EventSource retries), closing the connection.
// The gateway's CORS policy and gRPC-Web layer apply, so that a page of
// another origin can read it (a preflight gets its ordinary answer) and
// a gRPC-Web text caller gets text.
func (l *connLimitListener) refusalAnswer(head []byte, msg string) []byte {
	ce := connect.NewError(connect.CodeResourceExhausted, errors.New(msg))
	ce.Meta().Set("Retry-After", "1")
	for _, detail := range []proto.Message{
		&errdetails.ErrorInfo{Reason: "CONNECTION_LIMIT", Domain: "flowgate"},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)},
	} {
		if d, err := connect.NewErrorDetail(detail); err == nil {
			ce.AddDetail(d)
		}
	}
	w := &answerWriter{header: http.Header{}}
	var answer http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.stream == nil || !l.stream(w, r, ce) {
			l.errs.write(w, r, ce)
		}
	})
	if l.cors != nil {
		answer = l.cors.Handler(answer)
	}
	// As in front of the routes: Google's client's text mode is a
	// protocol of its own, which only this layer speaks; and every answer
	// carries a request id the caller can quote.
	answer = requestID(grpcWebLayer(answer))
	if r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head))); err == nil {
		answer.ServeHTTP(w, r)
	} else {
		w.header.Set(requestIDHeader, newRequestID())
		writeRESTError(w, ce)
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.header.Del("Transfer-Encoding")
	res := &http.Response{StatusCode: w.status, ProtoMajor: 1, ProtoMinor: 1, Header: w.header,
		Body: io.NopCloser(&w.body), ContentLength: int64(w.body.Len()), Close: true}
	var out bytes.Buffer
	_ = res.Write(&out) // into memory
	return out.Bytes()
}

// answerWriter keeps the response an error writer writes.
type answerWriter struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *answerWriter) Header() http.Header { return w.header }

func (w *answerWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *answerWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// FlushError lets an SSE answer flush as it writes; the answer is sent
// whole.
func (w *answerWriter) FlushError() error { return nil }

// connKey is what connections are counted by: the address, or its /64.
func connKey(addr netip.Addr) netip.Addr {
	if addr.Is4() {
		return addr
	}
	prefix, _ := addr.Prefix(64)
	return prefix.Addr()
}

// warn logs refused connections, at most once a minute.
func (l *connLimitListener) warn(addr netip.Addr) {
	now := time.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(time.Minute) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.logger.Warn("refusing connections over the per-address cap (logged once a minute)",
		slog.String("client_ip", addr.String()), slog.Int("max_conns_per_ip", l.open.Max()))
}

// limitedConn gives its place back when closed, once.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn exposes the socket, which the SSE bridge watches for the
// browser leaving a stream it took over.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}
