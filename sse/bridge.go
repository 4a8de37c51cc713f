package sse

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/http"

	"google.golang.org/protobuf/proto"
)

// ServeHTTP serves one stream: the query string becomes the request
// message, the RPC handler serves it in process, and its response messages
// become events.
//
// Requests that fail before the first message get a plain HTTP error in
// the contract's shape. Once the stream has started, an upstream failure is
// a final "error" event. A stream that ends cleanly ends with an "end"
// event (data {}), so that pages can close their EventSource rather than
// have it reconnect.
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
	msg, err := b.buildRequest(r.URL.Query(), lastEventID)
	if err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			validationError(fe.field, fe.reason).write(w)
			return
		}
		statusError(http.StatusBadRequest).write(w)
		return
	}
	body, err := envelope(msg.Interface())
	if err != nil {
		b.logger.Error("sse: could not encode request", "procedure", b.procedure, "error", err)
		statusError(http.StatusInternalServerError).write(w)
		return
	}
	inner := b.innerRequest(r, body)
	s := newStream(b, w)
	b.rpc.ServeHTTP(s, inner)
	s.finish(r)
}

// envelope frames msg as the single message of a Connect streaming request.
func envelope(msg proto.Message) ([]byte, error) {
	size := proto.Size(msg)
	buf := make([]byte, envelopeHeaderLen, envelopeHeaderLen+size)
	binary.BigEndian.PutUint32(buf[1:], uint32(size)) //nolint:gosec // bounded by the query size
	return proto.MarshalOptions{}.MarshalAppend(buf, msg)
}

// innerRequest is the Connect server-streaming request for the RPC
// handler. Its context is the browser's, so a browser that goes away
// cancels the call. Only allowlisted headers cross over: the caller's
// credentials and tracing, never the SSE exchange's own headers.
func (b *Bridge) innerRequest(r *http.Request, body []byte) *http.Request {
	inner, _ := http.NewRequestWithContext(r.Context(), http.MethodPost, b.procedure, bytes.NewReader(body))
	inner.RequestURI = b.procedure
	inner.Host = r.Host
	inner.RemoteAddr = r.RemoteAddr
	inner.TLS = r.TLS
	// The map lives as long as the stream: size it to what is copied.
	n := 2
	for _, name := range b.forward {
		if len(r.Header[name]) > 0 {
			n++
		}
	}
	inner.Header = make(http.Header, n)
	for _, name := range b.forward {
		if values := r.Header[name]; len(values) > 0 {
			inner.Header[name] = append([]string(nil), values...)
		}
	}
	inner.Header.Set("Content-Type", "application/connect+proto")
	inner.Header.Set("Connect-Protocol-Version", "1")
	return inner
}

// finish ends the stream once the RPC handler has returned.
func (s *stream) finish(r *http.Request) {
	if s.b.beats != nil {
		s.b.beats.remove(s)
	}
	s.mu.Lock()
	committed, outErr := s.committed, s.outErr
	s.mu.Unlock()
	if outErr != nil || r.Context().Err() != nil {
		s.close()
		return // the browser is gone: nobody to tell
	}
	failure := s.failure()
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

// failure is how the upstream call ended, nil for success.
func (s *stream) failure() *apiError {
	switch {
	case s.end != nil:
		return s.end
	case s.sawEnd:
		return nil
	case s.status != 0 && !s.isRPC:
		if s.status == http.StatusOK {
			return brokenStream()
		}
		return fromHTTPResponse(s.status, s.header, s.errBody)
	default:
		return brokenStream()
	}
}

func (s *stream) close() {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
}
