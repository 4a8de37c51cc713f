package sse

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// apiError is the contract's error shape with its HTTP status:
// {"error":{"code":"VALIDATION_ERROR","message":"...","details":{...}}}.
type apiError struct {
	status     int
	Code       string        `json:"code"`
	Message    string        `json:"message"`
	Details    *errorDetails `json:"details,omitempty"`
	retryAfter string
	// retryable failures pass on their own (an upstream restarting): the
	// browser gets them as an error event on a 200 stream, since
	// EventSource stops reconnecting for good on any other status.
	retryable bool
}

type errorDetails struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func (e *apiError) body() []byte {
	data, err := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{e})
	if err != nil { // unreachable: only strings
		return []byte(`{"error":{"code":"INTERNAL_ERROR","message":"internal error"}}`)
	}
	return data
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
		Details: &errorDetails{Field: field, Reason: reason},
	}
}

// codeShape maps a Connect code onto the contract's status, code and the
// message used when the upstream's own message must not be shown.
func codeShape(code connect.Code) (int, string, string, bool) {
	switch code {
	case connect.CodeInvalidArgument:
		return http.StatusBadRequest, "VALIDATION_ERROR", "Invalid request parameters", true
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized, "UNAUTHORIZED", "authentication required", true
	case connect.CodePermissionDenied:
		return http.StatusForbidden, "FORBIDDEN", "permission denied", true
	case connect.CodeNotFound:
		return http.StatusNotFound, "NOT_FOUND", "not found", true
	case connect.CodeAlreadyExists:
		return http.StatusConflict, "CONFLICT", "already exists", true
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests, "RATE_LIMITED", "too many requests", true
	case connect.CodeUnavailable:
		return http.StatusBadGateway, "BAD_GATEWAY", "upstream service unavailable", false
	case connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout, "GATEWAY_TIMEOUT", "upstream deadline exceeded", false
	default:
		// Internal, Unknown, DataLoss and the rest: the upstream's message
		// may carry internals, so callers get a generic one.
		return http.StatusInternalServerError, "INTERNAL_ERROR", "internal error", false
	}
}

// fromError shapes the error a handler returned.
func fromError(err error) *apiError {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return internalError()
	}
	status, code, generic, showMessage := codeShape(ce.Code())
	e := &apiError{status: status, Code: code, Message: generic}
	if showMessage && ce.Message() != "" {
		e.Message = ce.Message()
	}
	if ce.Code() == connect.CodeInvalidArgument {
		e.Details = badRequestDetails(ce.Details())
		// The contract keeps the seed's fixed message and puts the
		// specifics in details.
		if e.Details == nil && ce.Message() != "" {
			e.Details = &errorDetails{Reason: ce.Message()}
		}
		e.Message = generic
	}
	if ce.Code() == connect.CodeResourceExhausted {
		e.retryAfter = ce.Meta().Get("Retry-After")
	}
	e.retryable = ce.Code() == connect.CodeUnavailable
	return e
}

// badRequestDetails turns the first field violation of a google.rpc.BadRequest
// detail into the contract's {field, reason}.
func badRequestDetails(details []*connect.ErrorDetail) *errorDetails {
	for _, d := range details {
		if d.Type() != "google.rpc.BadRequest" {
			continue
		}
		v, err := d.Value()
		if err != nil {
			continue
		}
		br, ok := v.(*errdetails.BadRequest)
		if !ok || len(br.GetFieldViolations()) == 0 {
			continue
		}
		fv := br.GetFieldViolations()[0]
		return &errorDetails{Field: fv.GetField(), Reason: fv.GetDescription()}
	}
	return nil
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
