package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/emptypb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// rpcProtocols are the RPC protocols a caller may speak to the gateway.
var rpcProtocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"connect+json", []connect.ClientOption{connect.WithProtoJSON()}},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
	// Callers that compress their requests.
	{"grpc+gzip", []connect.ClientOption{connect.WithGRPC(), connect.WithSendGzip()}},
	{"connect+gzip", []connect.ClientOption{connect.WithSendGzip()}},
}

func engineClient(tb testing.TB, url string, opts []connect.ClientOption) enginev1connect.WorkflowEngineServiceClient {
	return enginev1Client(h2cClient(tb), url, opts...)
}

func enginev1Client(client *http.Client, url string, opts ...connect.ClientOption) enginev1connect.WorkflowEngineServiceClient {
	return enginev1connect.NewWorkflowEngineServiceClient(client, url, opts...)
}

func execute(name string) *connect.Request[enginev1.ExecuteWorkflowRequest] {
	return connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{Name: name}})
}

// restCall makes a REST call and decodes the JSON response body.
func restCall(tb testing.TB, method, url, body string, header http.Header) (*http.Response, map[string]any) {
	tb.Helper()
	req, err := http.NewRequestWithContext(tb.(interface{ Context() context.Context }).Context(), method, url, strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := http1Client(tb).Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	var out map[string]any
	if len(data) > 0 {
		if err := json.Unmarshal(data, &out); err != nil {
			tb.Fatalf("%s %s: body is not JSON: %q", method, url, data)
		}
	}
	return res, out
}

// wantRESTError checks the contract's error shape and status.
func wantRESTError(tb testing.TB, res *http.Response, body map[string]any, status int, code string) map[string]any {
	tb.Helper()
	if res.StatusCode != status {
		tb.Errorf("status = %d, want %d (body %v)", res.StatusCode, status, body)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		tb.Errorf("content type = %q, want application/json", ct)
	}
	e, ok := body["error"].(map[string]any)
	if !ok {
		tb.Fatalf("body has no error object: %v", body)
	}
	if e["code"] != code {
		tb.Errorf("error code = %v, want %s", e["code"], code)
	}
	if msg, _ := e["message"].(string); msg == "" {
		tb.Errorf("error has no message: %v", e)
	}
	details, _ := e["details"].(map[string]any)
	return details
}

func TestForwardUnaryEveryProtocol(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			res, err := engineClient(t, url, p.opts).ExecuteWorkflow(t.Context(), execute("hello-"+p.name))
			if err != nil {
				t.Fatal(err)
			}
			if got := res.Msg.GetResult().GetOutput().GetStringValue(); got != "hello-"+p.name {
				t.Errorf("output = %q", got)
			}
			if res.Header().Get("X-Backend-Header") != "h" {
				t.Errorf("backend header lost: %v", res.Header())
			}
			if res.Header().Get("Grpc-Internal-Thing") != "" || res.Trailer().Get("Grpc-Internal-Thing") != "" {
				t.Error("a protocol header of the upstream reached the caller")
			}
			if res.Trailer().Get("X-Backend-Trailer") != "t" && res.Header().Get("X-Backend-Trailer") != "t" {
				t.Errorf("backend trailer lost: %v %v", res.Header(), res.Trailer())
			}
		})
	}
	t.Run("rest", func(t *testing.T) {
		t.Parallel()
		res, body := restCall(t, http.MethodPost, url+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"hello-rest"},"validate_only":false}`, nil)
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %v", res.StatusCode, body)
		}
		if body["status"] != "succeeded" || body["output"] != "hello-rest" {
			t.Errorf("body = %v", body)
		}
		if _, camel := body["nodeResults"]; camel {
			t.Error("REST body uses camelCase names")
		}
		if _, ok := body["node_results"]; !ok {
			t.Errorf("REST body lacks node_results: %v", body)
		}
		if res.Header.Get("X-Backend-Header") != "h" {
			t.Errorf("backend header lost: %v", res.Header)
		}
	})
}

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

func TestDeadlinePropagation(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	capped := b.cfg
	capped.MaxTimeout = time.Second
	_, url := startGateway(t, capped)

	check := func(t *testing.T, min, max time.Duration) {
		t.Helper()
		_, left := b.engine.last(t)
		if left < min || left > max {
			t.Errorf("backend deadline in %v, want between %v and %v", left, min, max)
		}
	}
	t.Run("caller deadline reaches backend", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
		defer cancel()
		if _, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(ctx, execute("d")); err != nil {
			t.Fatal(err)
		}
		check(t, 300*time.Millisecond, 700*time.Millisecond)
	})
	t.Run("longer deadline is capped", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if _, err := engineClient(t, url, nil).ExecuteWorkflow(ctx, execute("d")); err != nil {
			t.Fatal(err)
		}
		check(t, 500*time.Millisecond, time.Second)
	})
	t.Run("no deadline gets the maximum", func(t *testing.T) {
		if _, err := engineClient(t, url, nil).ExecuteWorkflow(t.Context(), execute("d")); err != nil {
			t.Fatal(err)
		}
		check(t, 500*time.Millisecond, time.Second)
	})
	t.Run("rest caller sets one", func(t *testing.T) {
		res, body := restCall(t, http.MethodPost, url+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"d"}}`, http.Header{"X-Server-Timeout": {"0.6"}})
		if res.StatusCode != 200 {
			t.Fatalf("status %d: %v", res.StatusCode, body)
		}
		check(t, 200*time.Millisecond, 600*time.Millisecond)
	})
}

func TestHeaderAllowlist(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.ForwardHeaders = []string{"X-Tenant-Hint", "Content-Type", "Grpc-Timeout"}
	_, url := startGateway(t, cfg)
	sent := http.Header{
		"X-Request-Id":    {"req-123"},
		"Traceparent":     {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		"X-Tenant-Hint":   {"allowed-extra"},
		"X-Internal-Only": {"secret"},
		"Cookie":          {"session=abc"},
		"Authorization":   {"Bearer xyz"},
		"User-Agent":      {"caller-agent/1.0"},
	}
	wantSeen := []string{"X-Request-Id", "Traceparent", "X-Tenant-Hint"}
	wantHidden := []string{"X-Internal-Only", "Cookie", "Authorization"}
	verify := func(t *testing.T) {
		t.Helper()
		got, _ := b.engine.last(t)
		for _, name := range wantSeen {
			if got.Get(name) != sent.Get(name) {
				t.Errorf("%s = %q, want %q", name, got.Get(name), sent.Get(name))
			}
		}
		for _, name := range wantHidden {
			if got.Get(name) != "" {
				t.Errorf("%s reached the backend", name)
			}
		}
		if got.Get("User-Agent") == sent.Get("User-Agent") {
			t.Error("the caller's User-Agent reached the backend")
		}
		if ct := got.Get("Content-Type"); ct != "application/grpc" && ct != "application/grpc+proto" {
			t.Errorf("backend content type = %q", ct)
		}
	}
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			req := execute("h")
			for k, v := range sent {
				req.Header()[k] = v
			}
			if _, err := engineClient(t, url, p.opts).ExecuteWorkflow(t.Context(), req); err != nil {
				t.Fatal(err)
			}
			verify(t)
		})
	}
	t.Run("rest", func(t *testing.T) {
		res, body := restCall(t, http.MethodPost, url+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"h"}}`, sent)
		if res.StatusCode != 200 {
			t.Fatalf("status %d: %v", res.StatusCode, body)
		}
		verify(t)
	})
}

func TestServerStreamForwarding(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, p.opts...)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			start := time.Now()
			stream, err := client.Chat(ctx, connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "m"}))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if !stream.Receive() {
					t.Fatalf("stream ended early: %v", stream.Err())
				}
				if want := "m" + string(rune('a'+i)); stream.Msg().GetContent() != want {
					t.Errorf("message %d = %q, want %q", i, stream.Msg().GetContent(), want)
				}
			}
			// The backend sends one message every 100ms for 5s: three arriving
			// within a second means they were relayed as they came.
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("first messages took %v: the stream was buffered", elapsed)
			}
			if stream.ResponseHeader().Get("X-Stream-Header") != "s" {
				t.Errorf("stream header lost: %v", stream.ResponseHeader())
			}
			cancel()
			select {
			case <-b.agent.canceled:
			case <-time.After(time.Second):
				t.Error("the backend did not see the cancellation within a second")
			}
		})
	}
}

func TestServerStreamUpstreamError(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, p.opts...)
			stream, err := client.Chat(t.Context(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "fail"}))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for stream.Receive() {
				n++
			}
			if n != 2 {
				t.Errorf("got %d messages before the error, want 2", n)
			}
			if connect.CodeOf(stream.Err()) != connect.CodeInternal || !strings.Contains(stream.Err().Error(), "model went away") {
				t.Errorf("stream error = %v", stream.Err())
			}
		})
	}
}

func TestReflectionListsServices(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, version := range []string{"v1", "v1alpha"} {
		t.Run(version, func(t *testing.T) {
			t.Parallel()
			names := listServices(t, url, version)
			for _, want := range []string{"workflow.agent.v1.WorkflowAgentService", "workflow.runtime.v1.WorkflowRuntimeService", "workflow.engine.v1.WorkflowEngineService", "grpc.health.v1.Health"} {
				if !slices.Contains(names, want) {
					t.Errorf("reflection lacks %s: %v", want, names)
				}
			}
		})
	}
}

// listServices asks a reflection service of the given version to list the
// services, over gRPC, as grpcurl does. The messages are spelled out on the
// wire: both versions share one layout.
func listServices(t *testing.T, url, version string) []string {
	t.Helper()
	const listServicesField, listServicesResponseField, serviceField, nameField = 7, 6, 1, 1
	req := protowire.AppendTag(nil, listServicesField, protowire.BytesType)
	req = protowire.AppendString(req, "*")
	pkg := "grpc.reflection." + version
	client := connect.NewClient[frame, frame](h2cClient(t), url+"/"+pkg+".ServerReflection/ServerReflectionInfo", connect.WithGRPC(), connect.WithCodec(passthroughCodec{}))
	stream := client.CallBidiStream(t.Context())
	if err := stream.Send(&frame{data: req}); err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseRequest()
	res, err := stream.Receive()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseResponse()
	var names []string
	for _, list := range wireFields(t, res.data, listServicesResponseField) {
		for _, svc := range wireFields(t, list, serviceField) {
			for _, name := range wireFields(t, svc, nameField) {
				names = append(names, string(name))
			}
		}
	}
	return names
}

// wireFields returns the values of the length-delimited field num of msg.
func wireFields(t *testing.T, msg []byte, num protowire.Number) [][]byte {
	t.Helper()
	var out [][]byte
	for len(msg) > 0 {
		n, typ, l := protowire.ConsumeTag(msg)
		if l < 0 {
			t.Fatal(protowire.ParseError(l))
		}
		msg = msg[l:]
		if typ == protowire.BytesType && n == num {
			v, l := protowire.ConsumeBytes(msg)
			if l < 0 {
				t.Fatal(protowire.ParseError(l))
			}
			out = append(out, v)
			msg = msg[l:]
			continue
		}
		l = protowire.ConsumeFieldValue(n, typ, msg)
		if l < 0 {
			t.Fatal(protowire.ParseError(l))
		}
		msg = msg[l:]
	}
	return out
}

func TestHealth(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, path := range []string{"/health", "/api/v1/health"} {
		res, body := restCall(t, http.MethodGet, url+path, "", nil)
		if res.StatusCode != 200 {
			t.Fatalf("%s: status %d", path, res.StatusCode)
		}
		// The test backends serve no health service, so the upstreams are
		// unknown and the gateway reports itself degraded.
		if body["service"] != "flowgate" || body["status"] != "degraded" {
			t.Errorf("%s: body = %v", path, body)
		}
		if _, err := time.Parse(time.RFC3339, body["timestamp"].(string)); err != nil {
			t.Errorf("%s: timestamp: %v", path, err)
		}
		if _, ok := body["version"]; !ok {
			t.Errorf("%s: no version", path)
		}
	}
	res, err := grpchealth.NewClient(h2cClient(t), url, connect.WithGRPC()).Check(t.Context(), &grpchealth.CheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != grpchealth.StatusNotServing {
		t.Errorf("overall status = %v with unhealthy upstreams", res.Status)
	}
}

func TestWebhookCarriesRawBodyHeadersAndQuery(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	raw := []byte("order=42&total=150\x00\xff")
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, url+"/api/v1/webhooks/shop/orders?source=shopify&x=1", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Flowgate-Signature", "sha256=abc")
	req.Header.Set("X-Flowgate-Tenant", "spoofed")
	req.Header.Set("Idempotency-Key", "k1")
	res, err := http1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 201 || !bytes.Equal(body, raw) {
		t.Errorf("response %d %q", res.StatusCode, body)
	}
	if res.Header.Get("X-Order") != "accepted" || res.Header.Get("X-Flowgate-Execution-Id") != "exec-1" {
		t.Errorf("response headers %v", res.Header)
	}
	if res.Header.Get(statusHeader) != "" {
		t.Error("the internal status header leaked")
	}
	got := <-b.webhooks
	if got.GetPath() != "shop/orders" || !bytes.Equal(got.GetBody().GetData(), raw) || got.GetBody().GetContentType() != "application/octet-stream" {
		t.Errorf("backend got path %q body %q type %q", got.GetPath(), got.GetBody().GetData(), got.GetBody().GetContentType())
	}
	if got.GetHeaders()["x-flowgate-signature"] != "sha256=abc" || got.GetHeaders()["idempotency-key"] != "k1" {
		t.Errorf("headers = %v", got.GetHeaders())
	}
	if _, ok := got.GetHeaders()["x-flowgate-tenant"]; ok {
		t.Error("an identity header reached the webhook's header map")
	}
	if got.GetQuery()["source"] != "shopify" || got.GetQuery()["x"] != "1" {
		t.Errorf("query = %v", got.GetQuery())
	}
}
