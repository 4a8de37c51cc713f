package apierr

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestFromError(t *testing.T) {
	t.Parallel()
	rateLimited := connect.NewError(connect.CodeResourceExhausted, errors.New("rate limit exceeded; retry in 2 s"))
	if d, err := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)}); err == nil {
		rateLimited.AddDetail(d)
	}
	internal := connect.NewError(connect.CodeInternal, errors.New("pq: connection refused at 10.0.0.7"))
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: "DB_DOWN", Domain: "runtime"}); err == nil {
		internal.AddDetail(d)
	}
	cases := []struct {
		name    string
		err     error
		status  int
		code    string
		message string
		details map[string]any
		retry   string
	}{
		{"failed precondition", connect.NewError(connect.CodeFailedPrecondition, errors.New("not deployed")), 400, "VALIDATION_ERROR", "not deployed", nil, ""},
		{"rate limit", rateLimited, 429, "RATE_LIMITED", "rate limit exceeded; retry in 2 s", map[string]any{"retry_after_seconds": int64(2)}, "2"},
		{"too large", TooLarge(errors.New("request body exceeds 10 bytes")), 413, "PAYLOAD_TOO_LARGE", "request body exceeds 10 bytes", nil, ""},
		{"upstream internal", internal, 500, "INTERNAL_ERROR", "internal error", map[string]any{"reason": "DB_DOWN"}, ""},
		{"public unavailable", connect.NewError(connect.CodeUnavailable, Public("workflow engine is unavailable")), 502, "BAD_GATEWAY", "workflow engine is unavailable", nil, ""},
		{"uncoded", errors.New("open /etc/secret: permission denied"), 500, "INTERNAL_ERROR", "internal error", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := FromError(tc.err)
			if e.Status != tc.status || e.Code != tc.code || e.Message != tc.message || e.RetryAfter != tc.retry {
				t.Errorf("got %d %s %q retry %q, want %d %s %q retry %q", e.Status, e.Code, e.Message, e.RetryAfter, tc.status, tc.code, tc.message, tc.retry)
			}
			if len(e.Details) != len(tc.details) {
				t.Fatalf("details %v, want %v", e.Details, tc.details)
			}
			for k, v := range tc.details {
				if e.Details[k] != v {
					t.Errorf("details[%s] = %v, want %v", k, e.Details[k], v)
				}
			}
		})
	}
}

func TestNewNamesTheStatus(t *testing.T) {
	t.Parallel()
	e := New(http.StatusUnsupportedMediaType, "")
	if e.Code != "UNSUPPORTED_MEDIA_TYPE" || e.Message != "Unsupported Media Type" {
		t.Errorf("got %+v", e)
	}
	if got := string(e.JSON()); got != `{"error":{"code":"UNSUPPORTED_MEDIA_TYPE","message":"Unsupported Media Type"}}` {
		t.Errorf("JSON %s", got)
	}
}
