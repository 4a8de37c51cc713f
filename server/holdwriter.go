package server

import (
	"bytes"
	"net/http"
)

// holdingWriter passes a response through unless its owner, shown each
// status first, asks to hold it back: then the status and the start of the
// body are kept for the owner to rewrite once the handler is done, and
// nothing reaches the caller. Flushes pass through with the response;
// hiding http.Flusher or Unwrap would make streams hang.
type holdingWriter struct {
	http.ResponseWriter
	owner interface {
		// decide returns the status to pass on, or hold to keep it back.
		decide(code int) (status int, hold bool)
	}
	limit  int  // how much of a held body is kept
	held   int  // the status held back; 0 while passing through
	passed bool // the status has been passed on
	body   bytes.Buffer
}

func (w *holdingWriter) WriteHeader(code int) {
	if w.passed || w.held != 0 {
		return
	}
	code, hold := w.owner.decide(code)
	if hold {
		w.held = code
		return
	}
	w.passed = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *holdingWriter) Write(p []byte) (int, error) {
	if !w.passed && w.held == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.held != 0 {
		if room := w.limit - w.body.Len(); room > 0 {
			w.body.Write(p[:min(len(p), room)])
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

func (w *holdingWriter) Flush() {
	if !w.passed && w.held == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.held != 0 {
		return
	}
	http.NewResponseController(w.ResponseWriter).Flush() //nolint:errcheck // nothing to do about a failed flush
}

func (w *holdingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
