package sse

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
)

// apiError is the contract's error shape with its HTTP status:
// {"error":{"code":"VALIDATION_ERROR","message":"...","details":{...}}}.
type apiError struct {
	status     int
	Code       string        `json:"code"`
	Message    string        `json:"message"`
	Details    *errorDetails `json:"details,omitempty"`
	retryAfter string
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
	w.WriteHeader(e.status)
	_, _ = w.Write(append(e.body(), '\n'))
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

// wireError is a Connect error as JSON, in an end-stream message or a
// unary error body.
type wireError struct {
	Code    connect.Code `json:"code"`
	Message string       `json:"message"`
	Details []wireDetail `json:"details"`
}

type wireDetail struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

func fromWireError(we *wireError, meta http.Header) *apiError {
	status, code, generic, showMessage := codeShape(we.Code)
	e := &apiError{status: status, Code: code, Message: generic}
	if showMessage && we.Message != "" {
		e.Message = we.Message
	}
	if we.Code == connect.CodeInvalidArgument {
		e.Details = badRequestDetails(we.Details)
		// The contract keeps the seed's fixed message and puts the
		// specifics in details.
		if e.Details != nil {
			e.Message = generic
		} else if we.Message != "" {
			e.Details = &errorDetails{Reason: we.Message}
			e.Message = generic
		}
	}
	if we.Code == connect.CodeResourceExhausted && meta != nil {
		e.retryAfter = meta.Get("Retry-After")
	}
	return e
}

// badRequestDetails turns the first field violation of a google.rpc.BadRequest
// detail into the contract's {field, reason}.
func badRequestDetails(details []wireDetail) *errorDetails {
	for _, d := range details {
		if strings.TrimPrefix(d.Type, "type.googleapis.com/") != "google.rpc.BadRequest" {
			continue
		}
		raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(d.Value, "="))
		if err != nil {
			continue
		}
		var br errdetails.BadRequest
		if proto.Unmarshal(raw, &br) != nil || len(br.GetFieldViolations()) == 0 {
			continue
		}
		v := br.GetFieldViolations()[0]
		return &errorDetails{Field: v.GetField(), Reason: v.GetDescription()}
	}
	return nil
}

// fromHTTPResponse shapes a non-stream response of the RPC handler (an
// error written by HTTP middleware) into the contract's error.
func fromHTTPResponse(status int, header http.Header, body []byte) *apiError {
	// Already the contract's shape (the gateway's own middleware): keep it.
	var shaped struct {
		Error *struct {
			Code    string        `json:"code"`
			Message string        `json:"message"`
			Details *errorDetails `json:"details"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &shaped) == nil && shaped.Error != nil && shaped.Error.Code != "" &&
		status >= 400 && shaped.Error.Code == strings.ToUpper(shaped.Error.Code) {
		return &apiError{
			status: status, Code: shaped.Error.Code, Message: shaped.Error.Message,
			Details: shaped.Error.Details, retryAfter: header.Get("Retry-After"),
		}
	}
	var we wireError
	if json.Unmarshal(body, &we) == nil && we.Code != 0 {
		e := fromWireError(&we, header)
		e.retryAfter = header.Get("Retry-After")
		return e
	}
	e := statusError(status)
	e.retryAfter = header.Get("Retry-After")
	return e
}

func statusError(status int) *apiError {
	switch status {
	case http.StatusBadRequest:
		return &apiError{status: status, Code: "VALIDATION_ERROR", Message: "Invalid request parameters"}
	case http.StatusUnauthorized:
		return &apiError{status: status, Code: "UNAUTHORIZED", Message: "authentication required"}
	case http.StatusForbidden:
		return &apiError{status: status, Code: "FORBIDDEN", Message: "permission denied"}
	case http.StatusNotFound:
		return &apiError{status: status, Code: "NOT_FOUND", Message: "not found"}
	case http.StatusConflict:
		return &apiError{status: status, Code: "CONFLICT", Message: "already exists"}
	case http.StatusRequestEntityTooLarge:
		return &apiError{status: status, Code: "PAYLOAD_TOO_LARGE", Message: "request too large"}
	case http.StatusTooManyRequests:
		return &apiError{status: status, Code: "RATE_LIMITED", Message: "too many requests"}
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return &apiError{status: http.StatusBadGateway, Code: "BAD_GATEWAY", Message: "upstream service unavailable"}
	case http.StatusGatewayTimeout:
		return &apiError{status: status, Code: "GATEWAY_TIMEOUT", Message: "upstream deadline exceeded"}
	}
	if status >= 400 && status < 500 {
		return &apiError{status: http.StatusBadRequest, Code: "VALIDATION_ERROR", Message: "request rejected (HTTP " + strconv.Itoa(status) + ")"}
	}
	return &apiError{status: http.StatusInternalServerError, Code: "INTERNAL_ERROR", Message: "internal error"}
}

// brokenStream is what callers see when the upstream stream ends without
// an end-of-stream message, or speaks something other than Connect.
func brokenStream() *apiError {
	return &apiError{status: http.StatusBadGateway, Code: "BAD_GATEWAY", Message: "upstream stream ended unexpectedly"}
}
