package server

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

const engineSecret = "engine-loopback-secret"

// engineHostileCase is a workflow that attacks the engine itself, with
// what the run or the call must come to.
type engineHostileCase struct {
	name    string
	request func(secretPort int) string // ExecuteWorkflowRequest as JSON
	invalid bool                        // refused as InvalidArgument, else a failed run
	errHas  string                      // in the run's (or the call's) error
}

func setNode(value string) string {
	v, _ := json.Marshal(value)
	return fmt.Sprintf(`{"workflow_definition":{"name":"hostile","nodes":[{"id":"start","type":"trigger"},`+
		`{"id":"s","type":"set","parameters":{"values":{"x":%s}}}],"connections":[{"source":"start","target":"s"}]}}`, v)
}

func httpNode(url string) string {
	return fmt.Sprintf(`{"workflow_definition":{"name":"hostile","nodes":[{"id":"start","type":"trigger"},`+
		`{"id":"call","type":"http_request","parameters":{"url":%q}}],"connections":[{"source":"start","target":"call"}]}}`, url)
}

var engineHostileCases = []engineHostileCase{
	{name: "zoned loopback", errHas: "destination not allowed", request: func(p int) string {
		return httpNode(fmt.Sprintf("http://[::1%%25lo]:%d/secret", p))
	}},
	{name: "6to4 loopback", errHas: "destination not allowed", request: func(p int) string {
		return httpNode(fmt.Sprintf("http://[2002:7f00:1::]:%d/secret", p))
	}},
	{name: "NAT64 loopback", errHas: "destination not allowed", request: func(p int) string {
		return httpNode(fmt.Sprintf("http://[64:ff9b::7f00:1]:%d/secret", p))
	}},
	{name: "IPv4-compatible loopback", errHas: "destination not allowed", request: func(p int) string {
		return httpNode(fmt.Sprintf("http://[::127.0.0.1]:%d/secret", p))
	}},
	{name: "repeat bomb", errHas: "resource exhausted", request: func(int) string {
		return setNode(`{{ len(repeat(repeat("x", 100000), 1000000)) }}`)
	}},
	{name: "nested join bomb", errHas: "resource exhausted", request: func(int) string {
		return setNode(`{{ let a = map(1..300, "xxxxxxxxxx"); let b = map(1..300, join(a)); let c = map(1..300, join(b)); len(join(map(1..300, join(c)))) }}`)
	}},
	{name: "doubling concatenation", errHas: "resource exhausted", request: func(int) string {
		return setNode(`{{ len(reduce(1..64, #acc + #acc, "x")) }}`)
	}},
	{name: "huge range", errHas: "resource exhausted", request: func(int) string {
		return setNode(`{{ len(1..1000000000) }}`)
	}},
	{name: "deep nesting", errHas: "resource exhausted", request: func(int) string {
		return setNode(`{{ reduce(1..90000, [#acc], 0) }}`)
	}},
	{name: "deep brackets", invalid: true, errHas: "at most 16384", request: func(int) string {
		return setNode("{{ " + strings.Repeat("(", 10000) + "1" + strings.Repeat(")", 10000) + " }}")
	}},
}

// TestHostileWorkflowsEveryProtocol runs workflows that attack the engine
// (SSRF through address spellings, memory bombs) through the gateway on
// every protocol against the reference backends: each gets a clear error,
// no secret comes back, and the backends stay up for the next case.
func TestHostileWorkflowsEveryProtocol(t *testing.T) {
	t.Parallel()
	secret := secretListener(t)
	url := startReferenceGateway(t)
	auth := bearer(hsToken(t, nil))
	for _, tc := range engineHostileCases {
		t.Run(tc.name+"/rest", func(t *testing.T) {
			res := doREST(t, http.MethodPost, url+"/api/v1/workflow/execute", strings.NewReader(tc.request(secret)), auth)
			checkHostileREST(t, tc, res)
		})
		for _, p := range secProtocols {
			t.Run(tc.name+"/"+p.name, func(t *testing.T) {
				client := h2cClient(t)
				if p.http1 {
					client = http1Client(t)
				}
				msg := &enginev1.ExecuteWorkflowRequest{}
				if err := protojson.Unmarshal([]byte(tc.request(secret)), msg); err != nil {
					t.Fatal(err)
				}
				req := connect.NewRequest(msg)
				for k, v := range auth {
					req.Header()[k] = v
				}
				res, err := enginev1connect.NewWorkflowEngineServiceClient(client, url, p.opts...).ExecuteWorkflow(t.Context(), req)
				checkHostileRPC(t, tc, res, err)
			})
		}
	}
}

func checkHostileREST(t *testing.T, tc engineHostileCase, res restResult) {
	t.Helper()
	if strings.Contains(string(res.body), engineSecret) {
		t.Fatalf("the secret came back: %.300s", res.body)
	}
	if tc.invalid {
		if res.status != http.StatusBadRequest || res.code != "VALIDATION_ERROR" || !strings.Contains(string(res.body), tc.errHas) {
			t.Fatalf("%d %s %.300s, want 400 VALIDATION_ERROR mentioning %q", res.status, res.code, res.body, tc.errHas)
		}
		return
	}
	var result struct{ Status, Error string }
	if err := json.Unmarshal(res.body, &result); err != nil || res.status != http.StatusOK {
		t.Fatalf("%d %.300s (%v)", res.status, res.body, err)
	}
	if result.Status != "failed" || !strings.Contains(result.Error, tc.errHas) {
		t.Fatalf("run %q: %q, want a failed run mentioning %q", result.Status, result.Error, tc.errHas)
	}
}

func checkHostileRPC(t *testing.T, tc engineHostileCase, res *connect.Response[enginev1.ExecuteWorkflowResponse], err error) {
	t.Helper()
	if tc.invalid {
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.errHas) {
			t.Fatalf("err = %v, want InvalidArgument mentioning %q", err, tc.errHas)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	r := res.Msg.GetResult()
	if strings.Contains(r.String(), engineSecret) {
		t.Fatalf("the secret came back: %.300s", r.String())
	}
	if r.GetStatus() != "failed" || !strings.Contains(r.GetError(), tc.errHas) {
		t.Fatalf("run %q: %q, want a failed run mentioning %q", r.GetStatus(), r.GetError(), tc.errHas)
	}
}

// secretListener serves engineSecret on IPv6 loopback, where the SSRF
// cases aim; it returns the port.
func secretListener(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, engineSecret)
	}))
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().(*net.TCPAddr).Port
}
