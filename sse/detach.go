package sse

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// detach takes an HTTP/1.x GET's connection over from net/http, or returns
// nil when the stream stays with net/http (HTTP/2, HEAD, a writer that
// cannot be taken over).
//
// Served inside net/http's handler, an idle HTTP/1.1 stream keeps the
// connection's goroutine (whose stack the middleware, handler and encoding
// have grown to 16 KiB), its 4 KiB reader and writer buffers, the 2 KiB
// chunking buffer and a background reader. Once detached, it keeps only
// the handler's goroutine, started shallow, and an entry in the shared
// close watcher.
func detach(w http.ResponseWriter, r *http.Request) net.Conn {
	if r.ProtoMajor != 1 || r.Method != http.MethodGet {
		return nil
	}
	// Whatever net/http buffered past the request (a pipelined request) is
	// dropped: the response closes the connection.
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil
	}
	return conn
}

// serveDetached serves a stream on a detached connection from a goroutine
// of its own, so that net/http's can end.
func (b *Bridge) serveDetached(parent context.Context, conn net.Conn, header http.Header, c call) {
	// net/http cancels the request's context once its handler returns: the
	// stream keeps the context's values (identity, request id, access log
	// record) and is cancelled when the browser leaves.
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	out := &connWriter{conn: conn, header: header.Clone()}
	s := newStream(b, out, c)
	b.mu.Lock()
	b.detached[s] = func() {
		cancel()
		_ = conn.Close()
	}
	b.mu.Unlock()
	stop, watched := watchConn(conn, cancel)
	if !watched {
		go watchClose(conn, cancel)
		stop = func() {}
	}
	go func() {
		defer b.release(s)
		defer func() { _ = conn.Close() }()
		defer stop()
		defer cancel()
		s.finish(ctx, b.handler(ctx, s))
	}()
}

// watchClose cancels a detached stream when the browser closes the
// connection, as net/http's background read does for the streams it
// serves, where watchConn cannot. A browser sends nothing after its
// request; anything a client does send is read and dropped.
func watchClose(conn net.Conn, cancel context.CancelFunc) {
	var buf [64]byte
	for {
		if _, err := conn.Read(buf[:]); err != nil {
			cancel()
			return
		}
	}
}

func (b *Bridge) release(s *stream) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.detached, s)
	if len(b.detached) == 0 && b.drained != nil {
		close(b.drained)
		b.drained = nil
	}
}

// Shutdown waits for the streams on detached connections to end, as
// [http.Server.Shutdown] waits for the others (it cannot see detached
// connections). Streams end when their handler returns, so the handler
// should end them at shutdown; those still open when ctx ends are cut,
// their connections closed, and Shutdown returns a [*CutError] that
// counts them and wraps ctx's error.
func (b *Bridge) Shutdown(ctx context.Context) error {
	b.BeginShutdown()
	b.mu.Lock()
	if len(b.detached) == 0 {
		b.mu.Unlock()
		return nil
	}
	if b.drained == nil {
		b.drained = make(chan struct{})
	}
	drained := b.drained
	b.mu.Unlock()
	select {
	case <-drained:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	n := len(b.detached)
	for _, cut := range b.detached {
		cut()
	}
	b.mu.Unlock()
	return &CutError{Streams: n, Err: ctx.Err()}
}

// CutError is what [Bridge.Shutdown] returns when its context ended before
// every stream did.
type CutError struct {
	Streams int   // the streams cut
	Err     error // the context's error
}

func (e *CutError) Error() string {
	return fmt.Sprintf("sse: %d streams cut: %v", e.Streams, e.Err)
}

func (e *CutError) Unwrap() error { return e.Err }

// connWriter is the response on a detached connection. Its body runs until
// the connection closes (Connection: close), which is how a stream ends
// anyway; each write goes straight to the connection, so there is nothing
// to flush.
type connWriter struct {
	conn        net.Conn
	header      http.Header
	wroteHeader bool
}

func (w *connWriter) Header() http.Header {
	if w.header == nil { // sent: changes no longer matter
		w.header = http.Header{}
	}
	return w.header
}

func (w *connWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 ")
	head.WriteString(strconv.Itoa(code))
	head.WriteByte(' ')
	head.WriteString(http.StatusText(code))
	head.WriteString("\r\n")
	w.header.Set("Connection", "close")
	w.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	_ = w.header.Write(&head) // sanitizes names and values
	head.WriteString("\r\n")
	// A failed write shows again on the first body write.
	_, _ = w.conn.Write(head.Bytes())
	w.header = nil
}

func (w *connWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.conn.Write(p)
}

// FlushError is what http.ResponseController.Flush calls.
func (w *connWriter) FlushError() error { return nil }

// SetWriteDeadline is what http.ResponseController.SetWriteDeadline calls.
func (w *connWriter) SetWriteDeadline(t time.Time) error { return w.conn.SetWriteDeadline(t) }
