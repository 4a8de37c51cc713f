package sse

import (
	"context"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// ServeHTTP serves one stream: the query string becomes the request
// message, the handler serves it in process, and the messages it sends
// become events.
//
// Requests that fail before the first message get a plain HTTP error in
// the contract's shape, which stops EventSource, unless the failure will
// pass on its own (an unavailable upstream, a server shutting down, a rate
// limit that says when to retry): those get a 200 stream with retry advice
// and a single "error" event, so that EventSource keeps reconnecting. Once
// the stream has started, a failure is a final "error" event. A stream
// that ends cleanly ends with an "end" event (data {}), so that pages can
// close their EventSource rather than have it reconnect.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		(&apiError{status: http.StatusMethodNotAllowed, Code: "VALIDATION_ERROR", Message: "streams are read with GET"}).write(w)
		return
	}
	lastEventID := r.Header.Get("Last-Event-ID")
	if b.resume == nil && lastEventID != "" {
		// A browser reconnecting to a stream that cannot resume: repeating
		// the call would repeat its effect (a chat turn), so tell
		// EventSource to stop (HTTP 204 ends its reconnection loop).
		w.WriteHeader(http.StatusNoContent)
		return
	}
	msg, fe := b.buildRequest(r.URL.Query(), lastEventID)
	if fe != nil {
		validationError(fe.field, fe.reason).write(w)
		return
	}
	request, err := proto.Marshal(msg.Interface())
	if err != nil {
		b.logger.Error("sse: could not encode request", "procedure", b.procedure, "error", err)
		internalError().write(w)
		return
	}
	if b.closing.Load() {
		b.turnAway(w)
		return
	}
	c := call{
		request: request,
		header:  b.requestHeader(r),
		peer:    connect.Peer{Addr: r.RemoteAddr, Protocol: Protocol},
		resumed: lastEventID != "",
	}
	if conn := detach(w, r); conn != nil {
		b.serveDetached(r.Context(), conn, w.Header(), c)
		return
	}
	s := newStream(b, w, c)
	s.finish(r.Context(), b.handler(r.Context(), s))
}

// turnAway answers a stream opened while the server shuts down: the
// browser comes back after the advised delay, to this server restarted or
// to another behind the same address.
func (b *Bridge) turnAway(w http.ResponseWriter) { b.answerPassing(w, shuttingDown()) }

// Refuse answers a stream request that the server refused before serving
// it, for a reason that passes on its own (too many connections from the
// caller's address): err as the single error event of a 200 stream with
// retry advice, as for an outage, so that EventSource comes back after the
// advised delay instead of stopping for good.
func (b *Bridge) Refuse(w http.ResponseWriter, err error) {
	failure := fromError(err)
	failure.retryable = true
	b.answerPassing(w, failure)
}

// answerPassing writes a failure that will pass as a whole stream.
func (b *Bridge) answerPassing(w http.ResponseWriter, failure *apiError) {
	s := &stream{b: b, out: w, rc: http.NewResponseController(w)}
	s.writeError(failure)
	s.close()
}

// BeginShutdown tells the bridge that the server is shutting down, before
// the streams' calls are ended: a stream whose call then fails as
// unavailable or canceled tells its browser that the server is going away
// (not that the upstream failed), and new streams are turned away at once.
// [Bridge.Shutdown] calls it too.
func (b *Bridge) BeginShutdown() { b.closing.Store(true) }

// requestHeader is the call's request header. Only allowlisted headers
// cross over: the caller's credentials and tracing, never the SSE
// exchange's own headers.
func (b *Bridge) requestHeader(r *http.Request) http.Header {
	// The map lives as long as the stream: size it to what is copied.
	n := 0
	for _, name := range b.forward {
		if len(r.Header[name]) > 0 {
			n++
		}
	}
	header := make(http.Header, n)
	for _, name := range b.forward {
		if values := r.Header[name]; len(values) > 0 {
			header[name] = append([]string(nil), values...)
		}
	}
	return header
}

// finish ends the stream once the handler has returned err.
func (s *stream) finish(ctx context.Context, err error) {
	if s.b.beats != nil {
		s.b.beats.remove(s)
	}
	s.mu.Lock()
	committed, outErr := s.committed, s.outErr
	s.mu.Unlock()
	if outErr != nil || ctx.Err() != nil {
		s.close()
		return // the browser is gone: nobody to tell
	}
	failure := s.failure(err)
	switch {
	case failure == nil:
		_ = s.writeEvent("end", "", endData)
	case committed || failure.retryable:
		s.writeError(failure)
	default:
		failure.write(s.out)
	}
	s.close()
	if failure != nil {
		s.b.logger.Info("sse: stream failed", "procedure", s.b.procedure, "code", failure.Code, "events", s.events)
	}
}

// failure is what the browser is told of the error the handler returned;
// nil for a clean end.
func (s *stream) failure(err error) *apiError {
	switch {
	case s.broken != nil:
		return s.broken
	case err == nil:
		return nil
	}
	if code := connect.CodeOf(err); s.b.closing.Load() && (code == connect.CodeUnavailable || code == connect.CodeCanceled) {
		// The call was ended by the shutdown, whatever its handler made of
		// that.
		return shuttingDown()
	}
	return fromError(err)
}

func (s *stream) close() {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
}
