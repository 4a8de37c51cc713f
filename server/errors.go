package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// restError is the contract's error body for REST callers.
type restError struct {
	Error restErrorBody `json:"error"`
}

type restErrorBody struct {
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

// restStatus maps a Connect code to the contract's HTTP status and error
// code. Unavailable means the upstream could not be reached: a bad gateway,
// not the gateway's own unavailability.
func restStatus(code connect.Code) (int, string) {
	switch code {
	case connect.CodeInvalidArgument, connect.CodeOutOfRange, connect.CodeFailedPrecondition:
		return http.StatusBadRequest, "VALIDATION_ERROR"
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized, "UNAUTHORIZED"
	case connect.CodePermissionDenied:
		return http.StatusForbidden, "FORBIDDEN"
	case connect.CodeNotFound:
		return http.StatusNotFound, "NOT_FOUND"
	case connect.CodeAlreadyExists, connect.CodeAborted:
		return http.StatusConflict, "CONFLICT"
	case connect.CodeResourceExhausted:
		return http.StatusTooManyRequests, "RATE_LIMITED"
	case connect.CodeUnavailable:
		return http.StatusBadGateway, "BAD_GATEWAY"
	case connect.CodeDeadlineExceeded:
		return http.StatusGatewayTimeout, "GATEWAY_TIMEOUT"
	case connect.CodeUnimplemented:
		return http.StatusNotImplemented, "NOT_IMPLEMENTED"
	case connect.CodeCanceled:
		return 499, "CANCELED"
	default:
		return http.StatusInternalServerError, "INTERNAL_ERROR"
	}
}

// httpStatusCode maps an HTTP error status that no RPC produced (the
// transcoder's own rejections) to the contract's error code.
func httpStatusCode(status int) string {
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
	case http.StatusConflict:
		return "CONFLICT"
	case http.StatusRequestEntityTooLarge:
		return "PAYLOAD_TOO_LARGE"
	case http.StatusUnsupportedMediaType:
		return "UNSUPPORTED_MEDIA_TYPE"
	case http.StatusTooManyRequests:
		return "RATE_LIMITED"
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return "BAD_GATEWAY"
	case http.StatusGatewayTimeout:
		return "GATEWAY_TIMEOUT"
	case http.StatusNotImplemented:
		return "NOT_IMPLEMENTED"
	default:
		if status >= 500 {
			return "INTERNAL_ERROR"
		}
		return "VALIDATION_ERROR"
	}
}

// restDetails flattens the well-known error details into the contract's
// details object: the first field violation as field and reason (all of
// them under violations when there are several), the retry delay, and the
// reason and metadata of an ErrorInfo.
func restDetails(details []*connect.ErrorDetail) map[string]any {
	out := map[string]any{}
	for _, detail := range details {
		msg, err := detail.Value()
		if err != nil {
			continue
		}
		switch d := msg.(type) {
		case *errdetails.BadRequest:
			violations := d.GetFieldViolations()
			if len(violations) == 0 {
				continue
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
		case *errdetails.RetryInfo:
			if delay := d.GetRetryDelay(); delay != nil {
				out["retry_after_seconds"] = int64(delay.AsDuration().Seconds() + 0.999)
			}
		case *errdetails.ErrorInfo:
			if d.GetReason() != "" {
				out["reason"] = d.GetReason()
			}
			for k, v := range d.GetMetadata() {
				if _, taken := out[k]; !taken {
					out[k] = v
				}
			}
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

// writeRESTError writes err in the contract's shape with its HTTP status.
func writeRESTError(w http.ResponseWriter, err error) {
	ce := asConnectError(err)
	status, code := restStatus(ce.Code())
	for name, vals := range ce.Meta() {
		if !neverForwarded(name) {
			w.Header()[name] = vals
		}
	}
	writeRESTBody(w, status, restErrorBody{Code: code, Message: ce.Message(), Details: restDetails(ce.Details())})
}

func writeRESTBody(w http.ResponseWriter, status int, body restErrorBody) {
	if body.Message == "" {
		body.Message = http.StatusText(status)
	}
	if status == http.StatusTooManyRequests && w.Header().Get("Retry-After") == "" {
		if secs, ok := body.Details["retry_after_seconds"].(int64); ok {
			w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
		}
	}
	data, _ := json.Marshal(restError{Error: body})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	w.WriteHeader(status)
	_, _ = w.Write(data)
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
	writeRESTError(w, err)
}

// errorText is an error carrying msg, or nil for an empty message.
func errorText(msg string) error {
	if msg == "" {
		return nil
	}
	return errors.New(msg)
}
