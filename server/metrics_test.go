package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/flowgate/flowgate/backends"
)

// scrape fetches /metrics and parses the exposition.
func scrape(tb testing.TB, url string) map[string]*dto.MetricFamily {
	tb.Helper()
	families, err := fetchMetrics(tb, url)
	if err != nil {
		tb.Fatal(err)
	}
	return families
}

// fetchMetrics is scrape for a gateway that may not answer yet: a refused
// connection or status is an error; a malformed exposition fails the test.
func fetchMetrics(tb testing.TB, url string) (map[string]*dto.MetricFamily, error) {
	tb.Helper()
	res, err := http1Client(tb).Get(url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		return nil, fmt.Errorf("/metrics: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		tb.Fatalf("parse /metrics: %v", err)
	}
	return families, nil
}

// sample finds the series of family name with exactly labels; nil if none.
func sample(families map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	f := families[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// value is a counter's or gauge's value, or a histogram's count; -1 when
// the series does not exist.
func value(families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	m := sample(families, name, labels)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return -1
}

func rpcLabels(protocol, code string) map[string]string {
	l := map[string]string{"procedure": executeProcedure, "protocol": protocol}
	if code != "" {
		l["code"] = code
	}
	return l
}

// TestMetricsCountCallsByProtocol makes calls over REST, Connect and gRPC
// (the grpc-go path) and reads their counts back from /metrics.
func TestMetricsCountCallsByProtocol(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	gw, url := startGateway(t, b.cfg)
	for _, name := range []string{"r1", "missing"} {
		restCall(t, http.MethodPost, url+"/api/v1/workflow/execute", `{"workflow_definition":{"name":"`+name+`"}}`, nil)
	}
	for range 2 {
		if _, err := engineClient(t, url, nil).ExecuteWorkflow(t.Context(), execute("c")); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if _, err := engineClient(t, url, []connect.ClientOption{connect.WithGRPC()}).ExecuteWorkflow(t.Context(), execute("g")); err != nil {
			t.Fatal(err)
		}
	}
	if gw.fast.served.Load() < 3 {
		t.Fatalf("grpc-go served %d calls, want the gRPC ones", gw.fast.served.Load())
	}
	f := scrape(t, url)
	want := []struct {
		name   string
		labels map[string]string
		value  float64
	}{
		{"flowgate_rpc_requests_total", rpcLabels("rest", "ok"), 1},
		{"flowgate_rpc_requests_total", rpcLabels("rest", "not_found"), 1},
		{"flowgate_rpc_requests_total", rpcLabels("connect", "ok"), 2},
		{"flowgate_rpc_requests_total", rpcLabels("grpc", "ok"), 3},
		{"flowgate_rpc_duration_seconds", rpcLabels("grpc", "ok"), 3},
		{"flowgate_rpc_duration_seconds", rpcLabels("rest", "not_found"), 1},
		{"flowgate_rpc_in_flight", rpcLabels("grpc", ""), 0},
		{"flowgate_rpc_request_message_bytes", rpcLabels("grpc", ""), 3},
		{"flowgate_rpc_request_message_bytes", rpcLabels("rest", ""), 2},
		{"flowgate_rpc_response_message_bytes", rpcLabels("connect", ""), 2},
		{"flowgate_rpc_response_message_bytes", rpcLabels("rest", ""), 1},
		{"flowgate_upstream_calls_total", map[string]string{"upstream": "engine", "code": "ok"}, 6},
		{"flowgate_upstream_calls_total", map[string]string{"upstream": "engine", "code": "not_found"}, 1},
		{"flowgate_upstream_call_duration_seconds", map[string]string{"upstream": "engine"}, 7},
		{"flowgate_upstream_in_flight", map[string]string{"upstream": "engine"}, 0},
		{"flowgate_upstream_ejections_total", map[string]string{"upstream": "agent"}, 0},
		{"flowgate_upstream_ejected", map[string]string{"upstream": "runtime"}, 0},
		{"flowgate_sse_streams_open", map[string]string{}, 0},
	}
	for _, w := range want {
		if got := value(f, w.name, w.labels); got != w.value {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
	// A gRPC request message is the protobuf of {workflow_definition:{name:"g"}}.
	if sum := sample(f, "flowgate_rpc_request_message_bytes", rpcLabels("grpc", "")).GetHistogram().GetSampleSum(); sum != 3*5 {
		t.Errorf("gRPC request bytes = %v, want 15", sum)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if f[name] == nil {
			t.Errorf("no %s", name)
		}
	}
}

// TestMetricsUnknownProcedure: a procedure outside the descriptors does
// not become a label value of its own.
func TestMetricsUnknownProcedure(t *testing.T) {
	t.Parallel()
	m := newMetrics([]string{executeProcedure})
	m.series("/evil.Service/"+strings.Repeat("x", 40), "grpc").done(nil, 0)
	m.series(executeProcedure, "carrier-pigeon").done(nil, 0)
	families, err := m.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}
	if v := value(byName, "flowgate_rpc_requests_total", map[string]string{"procedure": "unknown", "protocol": "grpc", "code": "ok"}); v != 1 {
		t.Errorf("unknown procedure counted %v times", v)
	}
	if v := value(byName, "flowgate_rpc_requests_total", rpcLabels("unknown", "ok")); v != 1 {
		t.Errorf("unknown protocol counted %v times", v)
	}
}

// TestMetricsSecurityRefusals counts a call refused for its credentials
// and one refused by the rate limit, and nothing for the call let through.
func TestMetricsSecurityRefusals(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) {
		c.Security.RateLimitIP = 0.01
		c.Security.RateLimitIPBurst = 2
	})
	if _, err := limitedCall(t, f.url, "grpc", marker("metrics", "1"), nil); err != nil {
		t.Fatalf("first call: %v", err)
	}
	_, err := engineClient(t, f.url, nil).ExecuteWorkflow(t.Context(), connect.NewRequest(executeRequest(marker("metrics", "2"), false)))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("call without credentials: %v", err)
	}
	if _, err := limitedCall(t, f.url, "rest", marker("metrics", "3"), nil); err == nil {
		t.Fatal("third call was not limited")
	}
	m := scrape(t, f.url)
	if v := value(m, "flowgate_auth_failures_total", map[string]string{"reason": "unauthenticated"}); v != 1 {
		t.Errorf("auth failures = %v, want 1", v)
	}
	if v := value(m, "flowgate_rate_limit_refusals_total", map[string]string{"reason": "rate_limit"}); v != 1 {
		t.Errorf("rate-limit refusals = %v, want 1", v)
	}
	if v := value(m, "flowgate_rpc_requests_total", rpcLabels("rest", "resource_exhausted")); v != 1 {
		t.Errorf("REST calls refused = %v, want 1", v)
	}
}

// TestMetricsSSEStreamsOpen: an open SSE stream shows in the gauge and in
// the in-flight calls of its procedure with the sse protocol, and leaves
// both when it ends.
func TestMetricsSSEStreamsOpen(t *testing.T) {
	t.Parallel()
	base := startEmbedded(t, backends.Config{}, SSEConfig{})
	session := createSession(t, base)
	resp := sseGet(t, http1Client(t), base+"/api/v1/workflow_generation?session_id="+session, nil)
	readSSE(t, resp.Body, func(sseEvent) bool { return true }) // open
	labels := map[string]string{"procedure": "/workflow.agent.v1.WorkflowAgentService/WatchGeneration", "protocol": "sse"}
	f := scrape(t, base)
	if v := value(f, "flowgate_sse_streams_open", map[string]string{}); v != 1 {
		t.Errorf("SSE streams open = %v, want 1", v)
	}
	if v := value(f, "flowgate_rpc_in_flight", labels); v != 1 {
		t.Errorf("SSE calls in flight = %v, want 1", v)
	}
	_ = resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for value(scrape(t, base), "flowgate_sse_streams_open", map[string]string{}) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the closed stream is still counted open")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v := value(scrape(t, base), "flowgate_upstream_calls_total", map[string]string{"upstream": "agent", "code": "canceled"}); v != 1 {
		t.Errorf("agent streams canceled = %v, want 1", v)
	}
}

// TestNoMetricsRoute: with metrics off, /metrics is an unknown route.
func TestNoMetricsRoute(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	cfg := b.cfg
	cfg.NoMetrics = true
	_, url := startGateway(t, cfg)
	res, body := restCall(t, http.MethodGet, url+"/metrics", "", nil)
	if e, _ := body["error"].(map[string]any); res.StatusCode != http.StatusNotFound || e["code"] != "NOT_FOUND" {
		t.Errorf("/metrics with metrics off: %d %v", res.StatusCode, body)
	}
}

// TestMetricsSSEAuthFailures: SSE credentials refused at the HTTP level
// (a long-lived query token, a cookie from a foreign page) count as auth
// failures too, although no interceptor sees them.
func TestMetricsSSEAuthFailures(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	long := hsToken(t, nil)
	stream := f.url + "/api/v1/chat/stream?session_id=metrics&user_message=hi"
	if status, body := secSSEGet(t, stream+"&access_token="+long, nil); status != http.StatusUnauthorized {
		t.Fatalf("long-lived query token: %d %.200s", status, body)
	}
	h := http.Header{"Cookie": {defaultSSECookie + "=" + long}, "Origin": {"https://evil.test"}, "Sec-Fetch-Site": {"cross-site"}}
	if status, body := secSSEGet(t, stream, h); status != http.StatusUnauthorized {
		t.Fatalf("foreign cookie: %d %.200s", status, body)
	}
	if v := value(scrape(t, f.url), "flowgate_auth_failures_total", map[string]string{"reason": "unauthenticated"}); v != 2 {
		t.Errorf("auth failures = %v, want 2", v)
	}
}

// BenchmarkMetricsInterceptor is what the metrics add to a unary call.
func BenchmarkMetricsInterceptor(b *testing.B) {
	m := newMetrics(knownProcedures())
	res := connect.NewResponse(&frame{data: make([]byte, 32)})
	handler := m.interceptor().WrapUnary(func(context.Context, connect.AnyRequest) (connect.AnyResponse, error) {
		return res, nil
	})
	req := connect.NewRequest(&frame{data: make([]byte, 16)})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := handler(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
