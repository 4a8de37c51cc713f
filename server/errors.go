package server

import (
	"errors"
	"net/http"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/internal/apierr"
)

// writeRESTError writes err in the contract's shape with its HTTP status,
// with the error's metadata as headers.
func writeRESTError(w http.ResponseWriter, err error) {
	ce := asConnectError(err)
	for name, vals := range ce.Meta() {
		if !neverForwarded(name) {
			w.Header()[name] = vals
		}
	}
	apierr.FromError(ce).Write(w)
}

// writeRESTStatus writes an error that no RPC produced: a route's or the
// transcoder's own refusal.
func writeRESTStatus(w http.ResponseWriter, status int, msg string) {
	apierr.New(status, msg).Write(w)
}

// asConnectError returns err as a coded error; anything uncoded is internal
// and its text is not shown to callers.
func asConnectError(err error) *connect.Error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// errorWriter writes errors in the protocol of the request: Connect, gRPC
// and gRPC-Web callers get their protocol's error, everyone else the REST
// contract's.
type errorWriter struct {
	rpc *connect.ErrorWriter
}

func newErrorWriter() errorWriter {
	return errorWriter{rpc: connect.NewErrorWriter()}
}

func (e errorWriter) write(w http.ResponseWriter, r *http.Request, err error) {
	if isRPCRequest(r) {
		_ = e.rpc.Write(w, r, err)
		return
	}
	if rw, ok := w.(*restWriter); ok {
		// Inside the REST layer (an unknown route): it writes the error once,
		// rather than reshaping an error body already in the contract's shape.
		rw.fail(err)
		return
	}
	writeRESTError(w, err)
}

// errorText is an error carrying msg, or nil for an empty message.
func errorText(msg string) error {
	if msg == "" {
		return nil
	}
	return errors.New(msg)
}
