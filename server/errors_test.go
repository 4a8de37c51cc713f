package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestErrorsEveryProtocol(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	down := b.cfg
	down.Engine = Upstream{Address: deadAddress(t)}
	_, downURL := startGateway(t, down)

	cases := []struct {
		name     string
		url      string
		workflow string
		timeout  time.Duration
		code     connect.Code
		status   int
		restCode string
		field    string
	}{
		{name: "validation", url: url, workflow: "invalid", code: connect.CodeInvalidArgument, status: 400, restCode: "VALIDATION_ERROR", field: "workflow_definition.nodes[0].type"},
		{name: "not found", url: url, workflow: "missing", code: connect.CodeNotFound, status: 404, restCode: "NOT_FOUND"},
		{name: "deadline", url: url, workflow: "slow", timeout: 300 * time.Millisecond, code: connect.CodeDeadlineExceeded, status: 504, restCode: "GATEWAY_TIMEOUT"},
		{name: "upstream down", url: downURL, workflow: "any", code: connect.CodeUnavailable, status: 502, restCode: "BAD_GATEWAY"},
	}
	for _, tc := range cases {
		for _, p := range rpcProtocols {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				ctx := t.Context()
				if tc.timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tc.timeout)
					defer cancel()
				}
				start := time.Now()
				_, err := engineClient(t, tc.url, p.opts).ExecuteWorkflow(ctx, execute(tc.workflow))
				if connect.CodeOf(err) != tc.code {
					t.Fatalf("code = %v (%v), want %v", connect.CodeOf(err), err, tc.code)
				}
				if time.Since(start) > 5*time.Second {
					t.Errorf("took %v", time.Since(start))
				}
				var ce *connect.Error
				errors.As(err, &ce)
				if strings.Contains(ce.Message(), "dial tcp") || strings.Contains(ce.Message(), "127.0.0.1") {
					t.Errorf("message leaks internals: %q", ce.Message())
				}
				if tc.field != "" {
					var found bool
					for _, d := range ce.Details() {
						v, err := d.Value()
						if br, ok := v.(*errdetails.BadRequest); ok && err == nil {
							found = br.GetFieldViolations()[0].GetField() == tc.field
						}
					}
					if !found {
						t.Errorf("BadRequest detail for %s missing: %v", tc.field, ce.Details())
					}
					if ce.Meta().Get("X-Backend-Note") != "validated" {
						t.Errorf("error metadata lost: %v", ce.Meta())
					}
				}
			})
		}
		t.Run(tc.name+"/rest", func(t *testing.T) {
			t.Parallel()
			header := http.Header{}
			if tc.timeout > 0 {
				header.Set("X-Server-Timeout", "0.3")
			}
			res, body := restCall(t, http.MethodPost, tc.url+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"`+tc.workflow+`"}}`, header)
			details := wantRESTError(t, res, body, tc.status, tc.restCode)
			if tc.field != "" {
				if details["field"] != tc.field || details["reason"] == "" {
					t.Errorf("details = %v", details)
				}
				if res.Header.Get("X-Backend-Note") != "validated" {
					t.Errorf("error metadata lost: %v", res.Header)
				}
			}
		})
	}
}

func TestRESTRejectsBadRequests(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"unknown field", "POST", "/api/v1/workflow/execute", `{"workflow_definition":{"name":"x"},"surprise":1}`, 400, "VALIDATION_ERROR"},
		{"wrong type", "POST", "/api/v1/workflow/execute", `{"validate_only":"yes"}`, 400, "VALIDATION_ERROR"},
		{"not JSON", "POST", "/api/v1/workflow/execute", `{"workflow_definition":`, 400, "VALIDATION_ERROR"},
		{"unknown route", "GET", "/api/v1/nothing/here", "", 404, "NOT_FOUND"},
		{"unknown root route", "GET", "/favicon.ico", "", 404, "NOT_FOUND"},
		{"wrong method", "DELETE", "/api/v1/workflow/execute", "", 405, "METHOD_NOT_ALLOWED"},
		{"wrong method on health", "POST", "/health", "{}", 405, "METHOD_NOT_ALLOWED"},
		{"form body", "POST", "/api/v1/workflow/execute", "a=b", 415, "UNSUPPORTED_MEDIA_TYPE"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var header http.Header
			if tc.code == "UNSUPPORTED_MEDIA_TYPE" {
				header = http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}
			}
			res, body := restCall(t, tc.method, url+tc.path, tc.body, header)
			details := wantRESTError(t, res, body, tc.status, tc.code)
			_ = details
			if msg := body["error"].(map[string]any)["message"].(string); tc.status == 415 && !strings.Contains(msg, "application/json") {
				t.Errorf("415 message %q does not say what to send", msg)
			}
		})
	}
	if n := b.engine.calls(); n != 0 {
		t.Errorf("the backend saw %d malformed calls", n)
	}
}

func TestUnknownProcedureEveryProtocol(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			client := connect.NewClient[emptypb.Empty, emptypb.Empty](h2cClient(t), url+"/workflow.engine.v1.WorkflowEngineService/Teleport", p.opts...)
			_, err := client.CallUnary(t.Context(), connect.NewRequest(&emptypb.Empty{}))
			if code := connect.CodeOf(err); code != connect.CodeUnimplemented && code != connect.CodeNotFound {
				t.Errorf("code = %v (%v)", code, err)
			}
		})
	}
}

func TestWrongMethodEveryProtocol(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, ct := range []string{"application/grpc", "application/grpc-web+proto", "application/proto", "application/json"} {
		t.Run(ct, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPut, url+"/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", strings.NewReader("{}"))
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Connect-Protocol-Version", "1")
			res, err := h2cClient(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("status %d, want 405", res.StatusCode)
			}
		})
	}
	if n := b.engine.calls(); n != 0 {
		t.Errorf("the backend saw %d calls with the wrong method", n)
	}
}
