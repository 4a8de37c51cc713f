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
// the contract's shape. Once the stream has started, a failure is a final
// "error" event. A stream that ends cleanly ends with an "end" event
// (data {}), so that pages can close their EventSource rather than have it
// reconnect.
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
	header := b.requestHeader(r)
	peer := connect.Peer{Addr: r.RemoteAddr, Protocol: Protocol}
	if conn := detach(w, r); conn != nil {
		b.serveDetached(r.Context(), conn, w.Header(), request, header, peer)
		return
	}
	s := newStream(b, w, request, header, peer)
	s.finish(r.Context(), b.handler(r.Context(), s))
}

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
	var failure *apiError
	switch {
	case s.broken != nil:
		failure = s.broken
	case err != nil:
		failure = fromError(err)
	}
	switch {
	case failure != nil && committed:
		_ = s.writeEvent("error", "", failure.body())
	case failure != nil:
		failure.write(s.out)
	default:
		_ = s.writeEvent("end", "", endData)
	}
	s.close()
	if failure != nil {
		s.b.logger.Info("sse: stream failed", "procedure", s.b.procedure, "code", failure.Code, "events", s.events)
	}
}

func (s *stream) close() {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
}
