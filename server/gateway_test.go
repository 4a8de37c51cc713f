package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

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
	t.Run("no deadline is not sent upstream", func(t *testing.T) {
		if _, err := engineClient(t, url, nil).ExecuteWorkflow(t.Context(), execute("d")); err != nil {
			t.Fatal(err)
		}
		if _, left := b.engine.last(t); left != -1 {
			t.Errorf("backend saw a deadline %v away for a call that asked for none", left)
		}
	})
	t.Run("no deadline is still cut at the maximum", func(t *testing.T) {
		start := time.Now()
		_, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(t.Context(), execute("slow"))
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeDeadlineExceeded {
			t.Fatalf("err = %v, want deadline_exceeded", err)
		}
		// The words of the cap, not of a cancellation.
		if msg := ce.Message(); !strings.Contains(msg, "did not answer in time") {
			t.Errorf("message %q, want the upstream named as too slow", msg)
		}
		if took := time.Since(start); took < 900*time.Millisecond || took > 5*time.Second {
			t.Errorf("call ended after %v, want about the 1s maximum", took)
		}
		// The backend's call ended with it, canceled from the gateway's side.
		select {
		case <-b.engine.canceled:
		case <-time.After(5 * time.Second):
			t.Error("the backend's call was not canceled")
		}
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

// listServices asks a reflection service of the given version to list the
// services, over gRPC, as grpcurl does. The messages are spelled out on the
// wire: both versions share one layout.
// wireFields returns the values of the length-delimited field num of msg.
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

// TestUpstreamProtocols forwards to backends over each protocol an upstream
// may be configured to speak, unary and streaming.
func TestUpstreamProtocols(t *testing.T) {
	t.Parallel()
	for _, proto := range []string{ProtocolGRPC, ProtocolConnect, ProtocolGRPCWeb} {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			b := startTestBackends(t)
			cfg := b.cfg
			cfg.Engine.Protocol, cfg.Agent.Protocol = proto, proto
			_, url := startGateway(t, cfg)
			res, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(t.Context(), execute("via-"+proto))
			if err != nil || res.Msg.GetResult().GetOutput().GetStringValue() != "via-"+proto {
				t.Fatalf("unary: %v %v", res, err)
			}
			if ct := b.engine.headersOf(t).Get("Content-Type"); !strings.HasPrefix(ct, map[string]string{
				ProtocolGRPC: "application/grpc", ProtocolConnect: "application/proto", ProtocolGRPCWeb: "application/grpc-web",
			}[proto]) {
				t.Errorf("the backend was called with %q", ct)
			}
			_, err = engineClient(t, url, nil).ExecuteWorkflow(t.Context(), execute("invalid"))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("upstream error over %s: %v", proto, err)
			}
			stream, err := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url).Chat(t.Context(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "fail"}))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for stream.Receive() {
				n++
			}
			if n != 2 || connect.CodeOf(stream.Err()) != connect.CodeInternal {
				t.Errorf("stream over %s: %d messages, %v", proto, n, stream.Err())
			}
		})
	}
}

func TestUpstreamConfigErrors(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	for _, bad := range []Upstream{
		{Address: ""},
		{Address: "no-port"},
		{Address: "ftp://host:21"},
		{Address: b.cfg.Engine.Address, Protocol: "carrier-pigeon"},
	} {
		cfg := b.cfg
		cfg.Engine = bad
		if _, err := New(cfg); err == nil {
			t.Errorf("upstream %+v was accepted", bad)
		}
	}
}
