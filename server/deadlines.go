package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Two clocks keep a slow caller from holding the gateway's memory and
// connections for as long as it likes: a request body must arrive whole
// within the body read timeout, and a response write that makes no
// progress for the write timeout ends the call. Neither runs while a
// stream is idle: the read clock stops when the body ends, and the write
// clock only runs while a write is under way.

// errBodyTimeout marks a request body that did not arrive in time.
var errBodyTimeout = errors.New("request body not received")

// openEndedProcedures are the procedures whose request body stays open as
// long as the call: client- and bidirectional-streaming methods. Their
// bodies are not timed.
func openEndedProcedures(services []protoreflect.ServiceDescriptor) map[string]bool {
	open := map[string]bool{reflectionV1Procedure: true, reflectionV1AlphaProcedure: true}
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			if m := methods.Get(i); m.IsStreamingClient() {
				open["/"+string(svc.FullName())+"/"+string(m.Name())] = true
			}
		}
	}
	return open
}

// timeBody starts the body read timeout of r. On HTTP/1.1 the deadline is
// the connection's, so it is lifted as soon as the body ends: net/http
// then reads in the background to notice the caller leaving, and a
// deadline firing there would cancel a stream that is still wanted.
func (s *security) timeBody(call *edgeCall, w http.ResponseWriter, r *http.Request) *http.Request {
	timeout := s.cfg.BodyReadTimeout
	if timeout <= 0 || r.Body == nil || r.Body == http.NoBody || s.openEnded[r.URL.Path] {
		return r
	}
	if http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout)) != nil {
		return r
	}
	call.body = timedBody{ReadCloser: r.Body, w: w, timeout: timeout}
	r.Body = &call.body
	return r
}

// timedBody lifts the read deadline when its body ends and turns the
// deadline's error into one the caller can read. A body that timed out
// stays failed: whoever drains it after the error must not wait on a
// caller that sends nothing.
type timedBody struct {
	io.ReadCloser
	w       http.ResponseWriter // whose connection's deadline it is
	timeout time.Duration
	err     error
}

func (b *timedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.err = connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("%w within %s", errBodyTimeout, b.timeout))
		err = b.err
	default:
		b.err = err
		_ = http.NewResponseController(b.w).SetReadDeadline(time.Time{})
	}
	return n, err
}

// bodyTimedOut answers a request whose body did not arrive in time: 408
// for REST callers, DeadlineExceeded for RPC callers.
func (s *security) bodyTimedOut(w http.ResponseWriter, r *http.Request, err error) {
	w.Header().Set("Connection", "close")
	ce := asConnectError(err)
	if isRPCRequest(r) {
		_ = s.errs.rpc.Write(w, r, ce)
		return
	}
	writeRESTStatus(w, http.StatusRequestTimeout, ce.Message())
}

// stallChunk is the most a timed write hands down at once, so that a large
// response to a slow but steady reader is progress, not a stall. Smaller
// chunks cost large responses more: net/http's HTTP/2 writer hands each
// one to its connection loop (32 KiB cost a 1 MiB Connect call a fifth
// more CPU).
const stallChunk = 256 << 10

// untimedBytes is how much a response may have written since its last
// flush with its writes left untimed. Below net/http's own response
// buffers (2 KiB on HTTP/1.1, 4 KiB on HTTP/2, with room for gRPC-Web
// text mode's base64) a write only copies into them: it cannot reach the
// connection, so it cannot stall, and a timer for it would be wasted. What
// is buffered goes out at the next flush, which is timed, or when the
// handler returns, which no write timer covered before either.
const untimedBytes = 1 << 10

// stallWriter ends a call whose response write makes no progress for the
// timeout, by moving the write deadline into the past: the write under
// way fails, and with it the call.
type stallWriter struct {
	http.ResponseWriter
	call     *edgeCall // that holds it
	timeout  time.Duration
	timer    *time.Timer
	busy     atomic.Bool
	buffered int // written since the last flush
}

// timeWrites wraps w so that its writes are timed, unless writes are not
// timed or the route times its own (the SSE bridge renews a deadline with
// its heartbeats).
func (s *security) timeWrites(call *edgeCall, w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	if s.cfg.WriteTimeout <= 0 || ssePaths[r.URL.Path] {
		return w
	}
	call.stall = stallWriter{ResponseWriter: w, call: call, timeout: s.cfg.WriteTimeout}
	return &call.stall
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if w.buffered += len(p); w.buffered <= untimedBytes {
		return w.ResponseWriter.Write(p)
	}
	written := 0
	for len(p) > 0 {
		w.start()
		n, err := w.ResponseWriter.Write(p[:min(len(p), stallChunk)])
		w.stop()
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Flush sends what is buffered, timed like a write.
func (w *stallWriter) Flush() {
	w.buffered = 0
	w.start()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
	w.stop()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *stallWriter) start() {
	w.busy.Store(true)
	if w.timer == nil {
		w.timer = time.AfterFunc(w.timeout, w.stalled)
		return
	}
	w.timer.Reset(w.timeout)
}

func (w *stallWriter) stop() {
	w.busy.Store(false)
	w.timer.Stop()
}

// stalled runs when the timer fires. A timer that fired just as its write
// finished may find the next write under way and end that one: the caller
// had then taken the whole timeout to accept a chunk anyway.
func (w *stallWriter) stalled() {
	if w.busy.Load() {
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(-time.Second))
	}
}
