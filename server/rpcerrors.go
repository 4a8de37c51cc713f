package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/internal/apierr"
)

// rpcWriter gives Connect, gRPC and gRPC-Web callers their protocol's error
// where the transcoder answers with a plain-text HTTP error of its own (an
// unsupported encoding, a wrong method or stream type): a gRPC client
// cannot read one, and a Connect client reads it as an unknown error.
// Everything else passes through untouched.
type rpcWriter struct {
	holdingWriter
	r    *http.Request
	errs *connect.ErrorWriter
	// contentType and version classify the caller's protocol: the
	// transcoder removes them from the request's headers.
	contentType, version string
}

func newRPCWriter(w http.ResponseWriter, r *http.Request, errs *connect.ErrorWriter) *rpcWriter {
	rw := &rpcWriter{
		holdingWriter: holdingWriter{ResponseWriter: w, limit: 1024},
		r:             r, errs: errs,
		contentType: r.Header.Get("Content-Type"), version: r.Header.Get("Connect-Protocol-Version"),
	}
	rw.owner = rw
	return rw
}

// decide holds back the transcoder's plain-text errors only.
func (w *rpcWriter) decide(code int) (int, bool) {
	return code, code >= 400 && strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain")
}

// finish writes the held-back error in the caller's protocol.
func (w *rpcWriter) finish() {
	if w.held == 0 {
		return
	}
	h := w.Header()
	h.Del("Content-Type")
	h.Del("Content-Length")
	h.Del("X-Content-Type-Options")
	err := w.transcoderError()
	streaming := strings.HasPrefix(w.contentType, "application/grpc") || strings.HasPrefix(w.contentType, "application/connect+")
	if !streaming || w.r.Method != http.MethodPost {
		// Connect unary, or a request no protocol can answer in its own
		// shape (gRPC is POST only): Connect's JSON error, keeping the
		// transcoder's status (405 with its Allow).
		h.Set("Content-Type", "application/json")
		w.ResponseWriter.WriteHeader(w.held)
		_ = json.NewEncoder(w.ResponseWriter).Encode(map[string]string{"code": err.Code().String(), "message": err.Message()})
		return
	}
	caller := &http.Request{Method: w.r.Method, URL: w.r.URL, Header: http.Header{
		"Content-Type": {w.contentType}, "Connect-Protocol-Version": {w.version},
	}}
	_ = w.errs.Write(w.ResponseWriter, caller, err)
}

// transcoderError is the coded error for the transcoder's plain-text one.
// The protocol has no use for an HTTP method or media type it does not
// serve: those are Unimplemented, as gRPC names an unsupported encoding.
func (w *rpcWriter) transcoderError() *connect.Error {
	msg := strings.TrimSpace(w.body.String())
	if strings.ContainsAny(msg, "\n\t") || len(msg) > 200 {
		msg = http.StatusText(w.held)
	}
	switch w.held {
	case http.StatusMethodNotAllowed:
		msg = fmt.Sprintf("method %s is not allowed for this procedure; use %s", w.r.Method, w.Header().Get("Allow"))
		return connect.NewError(connect.CodeUnimplemented, errors.New(msg))
	case http.StatusNotFound, http.StatusUnsupportedMediaType, http.StatusNotImplemented, http.StatusHTTPVersionNotSupported:
		return connect.NewError(connect.CodeUnimplemented, errors.New(msg))
	case http.StatusRequestEntityTooLarge:
		return apierr.TooLarge(errors.New(msg))
	case http.StatusGatewayTimeout, http.StatusRequestTimeout:
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New(msg))
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return connect.NewError(connect.CodeUnavailable, errors.New(msg))
	}
	if w.held >= 500 {
		return connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}
