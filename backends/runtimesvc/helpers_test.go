package runtimesvc

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/flowgate/flowgate/backends/engine"
	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/backends/store/storetest"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// serveH2C serves h on a kernel-chosen loopback port over cleartext HTTP/2.
func serveH2C(tb testing.TB, h http.Handler) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	protocols.SetHTTP1(true)
	srv := &http.Server{Handler: h, Protocols: &protocols, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// h2cClient speaks only cleartext HTTP/2, as the gateway's upstreams do.
func h2cClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &protocols}}
}

// engineClient starts a real engine over h2c and returns its RPC client.
func engineClient(tb testing.TB) enginev1connect.WorkflowEngineServiceClient {
	tb.Helper()
	return engineClientWith(tb, engine.Config{})
}

// engineClientWith starts a real engine configured with cfg.
func engineClientWith(tb testing.TB, cfg engine.Config) enginev1connect.WorkflowEngineServiceClient {
	tb.Helper()
	eng, err := engine.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	path, h := enginev1connect.NewWorkflowEngineServiceHandler(eng)
	mux.Handle(path, h)
	return enginev1connect.NewWorkflowEngineServiceClient(h2cClient(), serveH2C(tb, mux))
}

func newService(tb testing.TB, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient, mod func(*Config)) *Service {
	tb.Helper()
	cfg := Config{Store: db, Engine: eng, PublicURL: "https://flows.example.com/", ShutdownGrace: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// testTenant is the tenant of requests a test makes without naming one
// (the authentication in front of the service always names one).
const testTenant = "test-tenant"

func req[T any](tenant string, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	if tenant == "" {
		tenant = testTenant
	}
	r.Header().Set(headerTenant, tenant)
	return r
}

func node(id, typ string, params map[string]any) *enginev1.Node {
	nd := &enginev1.Node{Id: id, Type: typ}
	if params != nil {
		nd.Parameters, _ = structpb.NewStruct(params)
	}
	return nd
}

// orderWorkflow answers 201 {"tier":"gold"} for totals over 100, else a text body.
func orderWorkflow() *enginev1.WorkflowDefinition {
	return &enginev1.WorkflowDefinition{
		Name: "orders",
		Nodes: []*enginev1.Node{
			node("start", "trigger", nil),
			node("big", "condition", map[string]any{"expression": "trigger.body.total > 100"}),
			node("gold", "respond", map[string]any{"status_code": 201, "headers": map[string]any{"X-Tier": "gold"}, "body": map[string]any{"tier": "gold", "order": "{{ trigger.body.id }}"}}),
			node("plain", "respond", map[string]any{"body": "thanks"}),
		},
		Connections: []*enginev1.Connection{
			{Source: "start", Target: "big"},
			{Source: "big", Target: "gold", Branch: "true"},
			{Source: "big", Target: "plain", Branch: "false"},
		},
	}
}

func webhookReq(path string, body []byte, headers map[string]string) *connect.Request[runtimev1.TriggerWebhookRequest] {
	if headers == nil {
		headers = map[string]string{}
	}
	return connect.NewRequest(&runtimev1.TriggerWebhookRequest{
		Path:    path,
		Body:    &httpbody.HttpBody{ContentType: "application/json", Data: body},
		Headers: headers,
	})
}

func signedHeaders(secret string, body []byte, at time.Time) map[string]string {
	ts := at.Unix()
	return map[string]string{
		headerTimestamp: strconv.FormatInt(ts, 10),
		headerSignature: Sign(secret, ts, body),
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storeTest is one test of a suite run over every database.
type storeTest func(*testing.T, *store.DB, enginev1connect.WorkflowEngineServiceClient)

// runOverBackends runs each test of suite, in parallel, on a fresh SQLite
// database and a fresh PostgreSQL schema, with one engine for all.
func runOverBackends(t *testing.T, suite map[string]storeTest) {
	t.Helper()
	eng := engineClient(t)
	for _, b := range storetest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			for name, fn := range suite {
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					fn(t, b.Open(t), eng)
				})
			}
		})
	}
}
