// Package apierr is the gateway's one mapping from a coded error to the
// public contract's REST error: the HTTP status, the contract's code, a
// plain-text message and the flattened details. The REST layer (server/)
// and the Server-Sent-Events bridge (sse/) both answer through it, so a
// caller gets the same answer for the same failure on either.
//
// It knows nothing of workflows and imports only connect and the
// well-known error details.
package apierr

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// Error is an error in the contract's shape, with its HTTP status.
type Error struct {
	Status  int            `json:"-"`
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
	// RetryAfter is the Retry-After header value of a rate-limited call or
	// of one refused while its upstream is ejected.
	RetryAfter string `json:"-"`
}

// JSON is the body {"error":{...}}.
func (e *Error) JSON() []byte {
	data, err := json.Marshal(struct {
		Error *Error `json:"error"`
	}{e})
	if err != nil { // only strings and plain values: not expected
		return []byte(`{"error":{"code":"INTERNAL_ERROR","message":"internal error"}}`)
	}
	return data
}

// Write sends e as a complete HTTP response.
func (e *Error) Write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	if e.RetryAfter != "" {
		h.Set("Retry-After", e.RetryAfter)
	}
	w.WriteHeader(e.Status)
	_, _ = w.Write(e.JSON())
}

// New is an error with an HTTP status that no RPC code produced (a
// transcoder's or a route's own refusal), with the contract's code for it.
func New(status int, message string) *Error {
	if message == "" {
		message = http.StatusText(status)
	}
	return &Error{Status: status, Code: CodeOfStatus(status), Message: message}
}

// FromError maps err. Uncoded errors are internal and show nothing of
// themselves. Server-side failures (5xx) show a generic message unless
// their text was made for callers ([Public]): an upstream's message about
// its own failure may carry its internals.
func FromError(err error) *Error {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return &Error{Status: http.StatusInternalServerError, Code: "INTERNAL_ERROR", Message: "internal error"}
	}
	status, code := Status(ce)
	e := &Error{Status: status, Code: code, Message: ce.Message(), Details: Details(ce.Details())}
	if status >= 500 && !IsPublic(ce.Unwrap()) {
		e.Message = genericMessage(ce.Code())
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		e.RetryAfter = ce.Meta().Get("Retry-After")
		if secs, ok := e.Details["retry_after_seconds"].(int64); ok && e.RetryAfter == "" {
			e.RetryAfter = strconv.FormatInt(secs, 10)
		}
	}
	return e
}

func genericMessage(code connect.Code) string {
	switch code {
	case connect.CodeUnavailable:
		return "upstream service unavailable"
	case connect.CodeDeadlineExceeded:
		return "upstream deadline exceeded"
	case connect.CodeUnimplemented:
		return "not implemented"
	default:
		return "internal error"
	}
}

// Status maps a coded error to the contract's HTTP status and code.
// Unavailable means an upstream could not be reached: a bad gateway, not
// the gateway's own unavailability, unless the gateway refused to send the
// call ([UpstreamRefused]: 503). ResourceExhausted is a rate limit unless
// the error says it is about size ([TooLarge]: 413, [UpstreamTooLarge]:
// 502). A reused Idempotency-Key is 422.
func Status(ce *connect.Error) (int, string) {
	status := http.StatusInternalServerError
	switch ce.Code() {
	case connect.CodeInvalidArgument, connect.CodeOutOfRange:
		status = http.StatusBadRequest
	case connect.CodeFailedPrecondition:
		status = http.StatusBadRequest
		if hasReason(ce, runtimeDomain, reasonIdempotencyKeyReused) {
			return http.StatusUnprocessableEntity, reasonIdempotencyKeyReused
		}
	case connect.CodeUnauthenticated:
		status = http.StatusUnauthorized
	case connect.CodePermissionDenied:
		status = http.StatusForbidden
	case connect.CodeNotFound:
		status = http.StatusNotFound
	case connect.CodeAlreadyExists, connect.CodeAborted:
		status = http.StatusConflict
	case connect.CodeResourceExhausted:
		switch {
		case IsTooLarge(ce):
			status = http.StatusRequestEntityTooLarge
		case hasReason(ce, gatewayDomain, reasonUpstreamTooLarge):
			status = http.StatusBadGateway
		default:
			status = http.StatusTooManyRequests
		}
	case connect.CodeUnavailable:
		status = http.StatusBadGateway
		if hasReason(ce, gatewayDomain, reasonUpstreamRefused) {
			status = http.StatusServiceUnavailable
		}
	case connect.CodeDeadlineExceeded:
		status = http.StatusGatewayTimeout
	case connect.CodeUnimplemented:
		status = http.StatusNotImplemented
	case connect.CodeCanceled:
		status = statusClientClosed
	}
	return status, CodeOfStatus(status)
}

// statusClientClosed is nginx's status for a caller that went away.
const statusClientClosed = 499

// CodeOfStatus is the contract's code for an HTTP error status.
func CodeOfStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "VALIDATION_ERROR"
	case http.StatusUnauthorized:
		return "UNAUTHORIZED"
	case http.StatusForbidden:
		return "FORBIDDEN"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusMethodNotAllowed:
		return "METHOD_NOT_ALLOWED"
	case http.StatusRequestTimeout:
		return "REQUEST_TIMEOUT"
	case http.StatusConflict:
		return "CONFLICT"
	case http.StatusRequestEntityTooLarge:
		return "PAYLOAD_TOO_LARGE"
	case http.StatusUnsupportedMediaType:
		return "UNSUPPORTED_MEDIA_TYPE"
	case http.StatusTooManyRequests:
		return "RATE_LIMITED"
	case http.StatusBadGateway:
		return "BAD_GATEWAY"
	case http.StatusServiceUnavailable:
		return "SERVICE_UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "GATEWAY_TIMEOUT"
	case http.StatusNotImplemented:
		return "NOT_IMPLEMENTED"
	case statusClientClosed:
		return "CANCELED"
	}
	if status >= 500 {
		return "INTERNAL_ERROR"
	}
	return "VALIDATION_ERROR"
}

// Details flattens the well-known error details into the contract's
// details object: the first field violation as field and reason (all of
// them under violations when there are several), the retry delay, and the
// reason and metadata of an ErrorInfo.
func Details(details []*connect.ErrorDetail) map[string]any {
	out := map[string]any{}
	for _, detail := range details {
		msg, err := detail.Value()
		if err != nil {
			continue
		}
		switch d := msg.(type) {
		case *errdetails.BadRequest:
			addViolations(out, d.GetFieldViolations())
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil {
				out["retry_after_seconds"] = int64(delay.AsDuration().Seconds() + 0.999)
			}
		case *errdetails.ErrorInfo:
			addErrorInfo(out, d)
		case *errdetails.ResourceInfo:
			if d.GetResourceName() != "" {
				out["resource"] = d.GetResourceName()
			}
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

func addViolations(out map[string]any, violations []*errdetails.BadRequest_FieldViolation) {
	if len(violations) == 0 {
		return
	}
	out["field"] = violations[0].GetField()
	out["reason"] = violations[0].GetDescription()
	if len(violations) > 1 {
		all := make([]map[string]string, 0, len(violations))
		for _, v := range violations {
			all = append(all, map[string]string{"field": v.GetField(), "reason": v.GetDescription()})
		}
		out["violations"] = all
	}
}

func addErrorInfo(out map[string]any, d *errdetails.ErrorInfo) {
	if d.GetReason() != "" && d.GetDomain() != gatewayDomain {
		out["reason"] = d.GetReason()
	}
	for k, v := range d.GetMetadata() {
		if _, taken := out[k]; !taken {
			out[k] = v
		}
	}
}
