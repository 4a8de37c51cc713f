package sse

import (
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/internal/apierr"
)

// apiError is the contract's error shape with its HTTP status:
// {"error":{"code":"VALIDATION_ERROR","message":"...","details":{...}}}.
// The mapping from a handler's error is the gateway's one mapping
// (internal/apierr), the one REST callers get too.
type apiError struct {
	status     int
	Code       string
	Message    string
	Details    map[string]any
	retryAfter string
	// retryable failures pass on their own (an upstream restarting, a rate
	// limit that says when to come back): the browser gets them as an
	// error event on a 200 stream, since EventSource stops reconnecting
	// for good on any other status, and cannot show a page the status.
	retryable bool
}

func (e *apiError) body() []byte {
	return (&apierr.Error{Code: e.Code, Message: e.Message, Details: e.Details}).JSON()
}

// write sends e as a plain HTTP error: the stream never started.
func (e *apiError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if e.retryAfter != "" {
		h.Set("Retry-After", e.retryAfter)
	}
	body := append(e.body(), '\n')
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}

func validationError(field, reason string) *apiError {
	return &apiError{
		status:  http.StatusBadRequest,
		Code:    "VALIDATION_ERROR",
		Message: "Invalid request parameters",
		Details: map[string]any{"field": field, "reason": reason},
	}
}

// fromError shapes the error a handler returned, before the stream or in
// it alike. A refusal that says when to retry (a rate limit) passes on
// its own; one that does not (too many streams open) waits on the
// caller, and stops EventSource.
func fromError(err error) *apiError {
	e := apierr.FromError(err)
	code := connect.CodeOf(err)
	return &apiError{status: e.Status, Code: e.Code, Message: e.Message, Details: e.Details, retryAfter: e.RetryAfter,
		retryable: code == connect.CodeUnavailable || code == connect.CodeResourceExhausted && e.RetryAfter != ""}
}

// retryAdvice is the reconnection delay a retryable failure asks for
// beyond the bridge's own advice, or 0: a rate limit's Retry-After.
func (e *apiError) retryAdvice() time.Duration {
	secs, err := strconv.Atoi(e.retryAfter)
	if err != nil || secs <= 0 {
		return 0
	}
	return time.Duration(secs) * time.Second
}

// internalError is what callers see when the gateway itself fails; the
// cause is logged, not shown.
func internalError() *apiError {
	return &apiError{status: http.StatusInternalServerError, Code: "INTERNAL_ERROR", Message: "internal error"}
}

// brokenStream is what callers see when a message cannot become an event.
func brokenStream() *apiError {
	return &apiError{status: http.StatusBadGateway, Code: "BAD_GATEWAY", Message: "upstream stream ended unexpectedly"}
}

// shuttingDown is what a browser is told when its stream ends, or is
// turned away, because the server is shutting down: the code of an
// unavailable call, as every other protocol gets, and the true reason.
func shuttingDown() *apiError {
	return &apiError{status: http.StatusBadGateway, Code: "BAD_GATEWAY", Message: "the gateway is shutting down; reconnect", retryable: true}
}
