package server

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// The protocol edge table: each row is one situation at the gateway's edge,
// sent in the form each protocol has for it, and the answer every protocol
// must give. A row leaves out the protocols the situation does not exist
// on. To add a case, add a row; the runners below do the rest.

const executeProcedure = "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow"

// edgeCase is one row of the table.
type edgeCase struct {
	name string
	// gateway picks the fixture: "" (defaults), "small" (1 KiB body limit)
	// or "limited" (its per-IP rate budget already spent).
	gateway string
	rest    *restEdge
	rpc     *rpcEdge
	sse     *sseEdge
	want    edgeWant
	// per overrides want on the named protocols.
	per map[string]edgeWant
}

// restEdge is the REST form of a case.
type restEdge struct {
	method, path, body string
	header             http.Header
}

// rpcEdge is the RPC form of a case, sent on every RPC protocol named in
// only (all of them when empty).
type rpcEdge struct {
	procedure string
	// msg is the request message; json, when set, is sent instead on the
	// JSON protocols, and the row then runs on those only.
	msg  proto.Message
	json string
	// empty sends a request with no message bytes at all.
	empty  bool
	header http.Header
	// gzip compresses the message (per-message compression).
	gzip bool
	// get sends a Connect GET (Connect JSON only).
	get  bool
	only []string
}

// sseEdge is the SSE form of a case: a GET of a stream route.
type sseEdge struct {
	path string
}

// edgeWant is the answer: ok, or an error with its REST status and code,
// its RPC code, and a text its message must contain on every protocol.
type edgeWant struct {
	ok       bool
	status   int
	restCode string
	code     connect.Code
	message  string
	// inStream: the SSE error comes as an event after the stream started;
	// detail is a details key the event must carry.
	inStream bool
	detail   string
}

var edgeCases = []edgeCase{
	// 1. REST errors in the contract's shape, with a plain message.
	{
		name: "unknown route",
		rest: &restEdge{method: "GET", path: "/api/v1/nope"},
		rpc:  &rpcEdge{procedure: "/workflow.engine.v1.WorkflowEngineService/Teleport", msg: &enginev1.ExecuteWorkflowRequest{}},
		want: edgeWant{status: 404, restCode: "NOT_FOUND", code: connect.CodeUnimplemented, message: "no route for"},
	},
	{
		name: "truncated JSON",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{"workflow_definition":`},
		rpc:  &rpcEdge{procedure: executeProcedure, json: `{"workflow_definition":`},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", code: connect.CodeInvalidArgument, message: "invalid JSON body"},
	},
	{
		name: "unknown field",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{"surprise":1}`},
		rpc:  &rpcEdge{procedure: executeProcedure, json: `{"surprise":1}`},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", code: connect.CodeInvalidArgument, message: `unknown field "surprise"`},
	},
	{
		name: "bad query value",
		rest: &restEdge{method: "GET", path: "/api/v1/executions?page=abc"},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", message: "invalid page: not a valid value", detail: "field"},
	},
	{
		name: "unknown query parameter",
		rest: &restEdge{method: "GET", path: "/api/v1/executions?nope=1"},
		sse:  &sseEdge{path: "/api/v1/chat/stream?session_id=s&nope=1"},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", message: "invalid nope: unknown query parameter", detail: "field"},
		per: map[string]edgeWant{
			"sse": {status: 400, restCode: "VALIDATION_ERROR", message: "Invalid request parameters", detail: "field"},
		},
	},
	{
		name: "backend validation",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{"workflow_definition":{"name":"invalid"}}`},
		rpc:  &rpcEdge{procedure: executeProcedure, msg: executeRequest("invalid", false)},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", code: connect.CodeInvalidArgument, message: "unknown node type"},
	},

	// 3. Size errors are 413, rate limits 429; an upstream's oversized
	// response is neither.
	{
		name:    "body over the limit",
		gateway: "small",
		rest:    &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: executeJSON("big", true)},
		rpc:     &rpcEdge{procedure: executeProcedure, msg: executeRequest("big", true)},
		want:    edgeWant{status: 413, restCode: "PAYLOAD_TOO_LARGE", code: connect.CodeResourceExhausted, message: "exceeds"},
	},
	{
		name:    "compressed body inflating over the limit",
		gateway: "small",
		rest:    &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: executeJSON("big", true), header: http.Header{"Content-Encoding": {"gzip"}}},
		// gRPC and gRPC-Web: see the compressed body guard's tests.
		rpc:  &rpcEdge{procedure: executeProcedure, msg: executeRequest("big", true), gzip: true, only: []string{"connect-json", "connect-proto"}},
		want: edgeWant{status: 413, restCode: "PAYLOAD_TOO_LARGE", code: connect.CodeResourceExhausted, message: "exceed"},
	},
	{
		name:    "rate limited",
		gateway: "limited",
		rest:    &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`},
		rpc:     &rpcEdge{procedure: executeProcedure, msg: &enginev1.ExecuteWorkflowRequest{}},
		sse:     &sseEdge{path: "/api/v1/chat/stream?session_id=s&user_message=hi"},
		want:    edgeWant{status: 429, restCode: "RATE_LIMITED", code: connect.CodeResourceExhausted, message: "rate limit exceeded", detail: "retry_after_seconds"},
	},
	{
		name:    "upstream response over the limit",
		gateway: "small",
		rest:    &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{"workflow_definition":{"name":"huge"}}`},
		rpc:     &rpcEdge{procedure: executeProcedure, msg: executeRequest("huge", false), only: []string{"connect-json", "connect-proto"}},
		want:    edgeWant{status: 502, restCode: "BAD_GATEWAY", message: "response"},
		// The transcoder holds a Connect unary response whole; gRPC and
		// gRPC-Web stream it through.
		per: map[string]edgeWant{
			"connect-json":  {code: connect.CodeResourceExhausted, message: "exceeded"},
			"connect-proto": {code: connect.CodeResourceExhausted, message: "exceeded"},
		},
	},

	// 5. REST bodies and paths.
	{
		name: "empty POST body",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute"},
		rpc:  &rpcEdge{procedure: executeProcedure, empty: true},
		want: edgeWant{ok: true},
	},
	{
		name: "JSON with a charset",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"Content-Type": {"application/json;charset=UTF-8"}}},
		want: edgeWant{ok: true},
	},
	{
		name: "JSON media type in capitals",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"Content-Type": {"Application/JSON"}}},
		want: edgeWant{ok: true},
	},
	{
		name: "not JSON",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"Content-Type": {"text/json; charset=latin1"}}},
		want: edgeWant{status: 415, restCode: "UNSUPPORTED_MEDIA_TYPE", message: "application/json"},
	},
	{
		name: "escaped percent in a path parameter",
		rest: &restEdge{method: "GET", path: "/api/v1/executions/a%25b"},
		want: edgeWant{status: 404, restCode: "NOT_FOUND", message: `execution "a%b" not found`},
	},
	{
		name: "escaped escape in a path parameter",
		rest: &restEdge{method: "GET", path: "/api/v1/executions/a%252Fb"},
		want: edgeWant{status: 404, restCode: "NOT_FOUND", message: `execution "a%2Fb" not found`},
	},
	{
		name: "escaped slash in a path parameter",
		rest: &restEdge{method: "GET", path: "/api/v1/executions/a%2Fb"},
		want: edgeWant{status: 404, restCode: "NOT_FOUND", message: `execution "a/b" not found`},
	},

	// 6. Codes that steer retries.
	{
		name: "invalid binary header",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"X-Trace-Bin": {"!!not base64!!"}}},
		rpc:  &rpcEdge{procedure: executeProcedure, msg: &enginev1.ExecuteWorkflowRequest{}, header: http.Header{"X-Trace-Bin": {"!!not base64!!"}}},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", code: connect.CodeInvalidArgument, message: "X-Trace-Bin"},
	},
	{
		name: "gRPC timeout over 8 hours",
		rpc:  &rpcEdge{procedure: executeProcedure, msg: &enginev1.ExecuteWorkflowRequest{}, header: http.Header{"Grpc-Timeout": {"99999H"}}, only: []string{"grpc", "grpc-web"}},
		want: edgeWant{ok: true},
	},
	{
		name: "REST timeout beyond 8 hours",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"X-Server-Timeout": {"1e300"}}},
		want: edgeWant{ok: true},
	},
	{
		name: "REST timeout not a number",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"X-Server-Timeout": {"abc"}}},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", message: "X-Server-Timeout: must be a positive number of seconds"},
	},
	{
		name: "REST timeout negative",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"X-Server-Timeout": {"-1"}}},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", message: "X-Server-Timeout: must be a positive number of seconds"},
	},

	// 7. The transcoder's own refusals, in each protocol's error shape.
	{
		name: "malformed RPC timeout",
		rpc:  &rpcEdge{procedure: executeProcedure, msg: &enginev1.ExecuteWorkflowRequest{}, header: http.Header{"Grpc-Timeout": {"soon"}, "Connect-Timeout-Ms": {"soon"}}},
		want: edgeWant{code: connect.CodeInvalidArgument, message: "-Timeout"},
	},
	{
		name: "unsupported encoding",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{}`, header: http.Header{"Content-Encoding": {"br"}}},
		rpc:  &rpcEdge{procedure: executeProcedure, msg: &enginev1.ExecuteWorkflowRequest{}, header: http.Header{"Grpc-Encoding": {"br"}, "Content-Encoding": {"br"}}},
		want: edgeWant{status: 415, restCode: "UNSUPPORTED_MEDIA_TYPE", code: connect.CodeUnimplemented, message: `"br"`},
	},
	{
		name: "Connect GET on a method with side effects",
		rpc:  &rpcEdge{procedure: executeProcedure, json: `{}`, get: true},
		want: edgeWant{code: connect.CodeUnimplemented, message: "GET"},
	},
	{
		name: "unary call of a server stream",
		rpc:  &rpcEdge{procedure: "/workflow.agent.v1.WorkflowAgentService/Chat", json: `{"session_id":"s"}`, only: []string{"connect-json"}},
		want: edgeWant{code: connect.CodeUnimplemented, message: "stream"},
	},

	// 8. One mapping for REST and SSE, before and inside a stream.
	{
		name: "failed precondition",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/execute", body: `{"workflow_definition":{"name":"precondition"}}`},
		sse:  &sseEdge{path: "/api/v1/chat/stream?session_id=s&user_message=precondition"},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", code: connect.CodeFailedPrecondition, message: "is not"},
	},
	{
		name: "internal error inside a stream",
		sse:  &sseEdge{path: "/api/v1/chat/stream?session_id=s&user_message=fail"},
		want: edgeWant{status: 500, restCode: "INTERNAL_ERROR", message: "internal error", inStream: true, detail: "reason"},
	},
}

// edgeProtocols are the RPC protocols of the table.
var edgeProtocols = []string{"connect-json", "connect-proto", "grpc", "grpc-web"}

func TestEdgeTable(t *testing.T) {
	t.Parallel()
	gateways := startEdgeGateways(t)
	for _, tc := range edgeCases {
		base := gateways[tc.gateway]
		if tc.rest != nil {
			t.Run(tc.name+"/rest", func(t *testing.T) {
				t.Parallel()
				runRESTEdge(t, base, tc.rest, tc.wantFor("rest"))
			})
		}
		if tc.sse != nil {
			t.Run(tc.name+"/sse", func(t *testing.T) {
				t.Parallel()
				runSSEEdge(t, base, tc.sse, tc.wantFor("sse"))
			})
		}
		if tc.rpc == nil {
			continue
		}
		for _, p := range edgeProtocols {
			if !tc.rpc.runsOn(p) {
				continue
			}
			t.Run(tc.name+"/"+p, func(t *testing.T) {
				t.Parallel()
				runRPCEdge(t, base, p, tc.rpc, tc.wantFor(p))
			})
		}
	}
}

func (tc edgeCase) wantFor(protocol string) edgeWant {
	if w, ok := tc.per[protocol]; ok {
		return w
	}
	return tc.want
}

func (r *rpcEdge) runsOn(protocol string) bool {
	json := protocol == "connect-json"
	switch {
	case r.get && !json, r.json != "" && !json:
		return false
	case len(r.only) == 0:
		return true
	}
	for _, p := range r.only {
		if p == protocol {
			return true
		}
	}
	return false
}

// startEdgeGateways starts the table's gateway fixtures over one set of
// test backends.
func startEdgeGateways(t *testing.T) map[string]string {
	b := startTestBackends(t)
	b.cfg.ForwardHeaders = []string{"X-Trace-Bin"}
	_, plain := startGateway(t, b.cfg)
	small := b.cfg
	small.Security.MaxBodyBytes = 1 << 10
	_, smallURL := startGateway(t, small)
	limited := b.cfg
	limited.Security.RateLimitIP, limited.Security.RateLimitIPBurst = 0.001, 1
	_, limitedURL := startGateway(t, limited)
	// Spend the budget, so that every call of the table is over it.
	res, _ := restCall(t, http.MethodPost, limitedURL+"/api/v1/workflow/execute", `{}`, nil)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("first call to the limited gateway: %d", res.StatusCode)
	}
	return map[string]string{"": plain, "small": smallURL, "limited": limitedURL}
}

// runRESTEdge sends the REST form of a case over HTTP/1.1 and checks the
// contract's answer: status, the error body and nothing of gRPC.
func runRESTEdge(t *testing.T, base string, r *restEdge, want edgeWant) {
	body := []byte(r.body)
	if r.header.Get("Content-Encoding") == "gzip" {
		body = gzipped(t, body)
	}
	req, err := http.NewRequestWithContext(t.Context(), r.method, base+r.path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	res, err := http1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	noRPCHeaders(t, res)
	if want.ok {
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200: %s", res.StatusCode, data)
		}
		return
	}
	checkContractError(t, res.StatusCode, res.Header, data, want)
}

// checkContractError checks a REST or SSE error: status, JSON content type,
// exactly {"error":{"code","message"[,"details"]}}, and a plain message.
func checkContractError(t *testing.T, status int, h http.Header, data []byte, want edgeWant) {
	t.Helper()
	if status != want.status {
		t.Errorf("status %d, want %d: %s", status, want.status, data)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	checkErrorBody(t, data, want)
}

func checkErrorBody(t *testing.T, data []byte, want edgeWant) {
	t.Helper()
	var body struct {
		Error struct {
			Code    string         `json:"code"`
			Message string         `json:"message"`
			Details map[string]any `json:"details"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body not in the contract's shape (%v): %s", err, data)
	}
	e := body.Error
	if e.Code != want.restCode {
		t.Errorf("code %q, want %q: %s", e.Code, want.restCode, data)
	}
	if !strings.Contains(e.Message, want.message) {
		t.Errorf("message %q does not contain %q", e.Message, want.message)
	}
	if strings.ContainsAny(e.Message, "{}\n") || strings.Contains(e.Message, "strconv.") || strings.Contains(e.Message, "proto:") {
		t.Errorf("message is not plain text: %q", e.Message)
	}
	if want.detail != "" && e.Details[want.detail] == nil {
		t.Errorf("details %v lack %q", e.Details, want.detail)
	}
}

// noRPCHeaders fails if a REST response carries a protocol header or
// trailer of gRPC or Connect.
func noRPCHeaders(t *testing.T, res *http.Response) {
	t.Helper()
	for _, h := range []http.Header{res.Header, res.Trailer} {
		for name := range h {
			if strings.HasPrefix(name, "Grpc-") || strings.HasPrefix(name, "Connect-") || name == "Trailer" {
				t.Errorf("REST response carries %s: %v", name, h[name])
			}
		}
	}
}

// runSSEEdge reads a stream route and checks its error: a plain HTTP error
// before the stream, or a final error event in it.
func runSSEEdge(t *testing.T, base string, s *sseEdge, want edgeWant) {
	res := sseGet(t, http1Client(t), base+s.path, nil)
	defer res.Body.Close()
	if !want.inStream {
		data, _ := io.ReadAll(res.Body)
		checkContractError(t, res.StatusCode, res.Header, data, want)
		return
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want a stream", res.StatusCode)
	}
	events := readSSE(t, res.Body, func(e sseEvent) bool { return e.name == "error" })
	if len(events) == 0 || events[len(events)-1].name != "error" {
		t.Fatalf("stream ended without an error event: %+v", events)
	}
	data, _ := json.Marshal(events[len(events)-1].data)
	checkErrorBody(t, data, want)
}

// runRPCEdge sends the RPC form of a case on one protocol, raw, and reads
// the answer in that protocol's own error shape.
func runRPCEdge(t *testing.T, base, protocol string, r *rpcEdge, want edgeWant) {
	req := rpcEdgeRequest(t, base, protocol, r)
	client := http1Client(t)
	if protocol == "grpc" {
		client = h2cClient(t)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	code, msg := rpcOutcome(t, protocol, res, data)
	if want.ok {
		if code != 0 {
			t.Fatalf("code %v (%q), want OK", code, msg)
		}
		return
	}
	if code != want.code {
		t.Errorf("code %v, want %v (message %q)", code, want.code, msg)
	}
	if !strings.Contains(msg, want.message) {
		t.Errorf("message %q does not contain %q", msg, want.message)
	}
	if strings.Contains(msg, "strconv.") || strings.Contains(msg, "proto:") || strings.HasPrefix(msg, "{") {
		t.Errorf("message is not plain text: %q", msg)
	}
}

func rpcEdgeRequest(t *testing.T, base, protocol string, r *rpcEdge) *http.Request {
	payload := rpcPayload(t, protocol, r)
	if r.gzip {
		payload = gzipped(t, payload)
	}
	method, target, ct := http.MethodPost, base+r.procedure, ""
	var body []byte
	switch protocol {
	case "connect-json", "connect-proto":
		ct, body = "application/"+strings.TrimPrefix(protocol, "connect-"), payload
	case "grpc", "grpc-web":
		ct, body = "application/"+protocol+"+proto", envelope(payload, r.gzip)
	}
	if r.get {
		method, body = http.MethodGet, nil
		target += "?connect=v1&encoding=json&message=" + url.QueryEscape(string(payload))
	}
	req, err := http.NewRequestWithContext(t.Context(), method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if !r.get {
		req.Header.Set("Content-Type", ct)
	}
	switch {
	case strings.HasPrefix(protocol, "connect"):
		req.Header.Set("Connect-Protocol-Version", "1")
		if r.gzip {
			req.Header.Set("Content-Encoding", "gzip")
		}
	case r.gzip:
		req.Header.Set("Grpc-Encoding", "gzip")
	}
	for k, v := range r.header {
		if protocolHeader(k) && !headerOf(protocol, k) {
			continue
		}
		req.Header[k] = v
	}
	return req
}

// protocolHeader and headerOf keep a row's protocol headers to the
// protocols they belong to.
func protocolHeader(name string) bool {
	return strings.HasPrefix(name, "Grpc-") || strings.HasPrefix(name, "Connect-") || name == "Content-Encoding"
}

func headerOf(protocol, name string) bool {
	if strings.HasPrefix(protocol, "grpc") {
		return strings.HasPrefix(name, "Grpc-")
	}
	return !strings.HasPrefix(name, "Grpc-")
}

func rpcPayload(t *testing.T, protocol string, r *rpcEdge) []byte {
	switch {
	case r.empty:
		return nil
	case r.json != "":
		return []byte(r.json)
	case protocol == "connect-json":
		data, err := protojson.Marshal(r.msg)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	data, err := proto.Marshal(r.msg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// envelope frames one message as gRPC and gRPC-Web do.
func envelope(msg []byte, compressed bool) []byte {
	out := make([]byte, 5, 5+len(msg))
	if compressed {
		out[0] = 1
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg))) //nolint:gosec // small test messages
	return append(out, msg...)
}

func gzipped(t *testing.T, data []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rpcOutcome reads the code and message of a response in the protocol's
// own shape, and fails on anything else (a plain-text body, a bare HTTP
// status).
func rpcOutcome(t *testing.T, protocol string, res *http.Response, data []byte) (connect.Code, string) {
	t.Helper()
	ct := res.Header.Get("Content-Type")
	if strings.HasPrefix(protocol, "connect") {
		if res.StatusCode == http.StatusOK {
			return 0, ""
		}
		var wire struct {
			Code    connect.Code `json:"code"`
			Message string       `json:"message"`
		}
		if ct != "application/json" || json.Unmarshal(data, &wire) != nil || wire.Code == 0 {
			t.Fatalf("not a Connect error: %d %q %q", res.StatusCode, ct, data)
		}
		return wire.Code, wire.Message
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "application/"+protocol) {
		t.Fatalf("not a %s response: %d %q %q", protocol, res.StatusCode, ct, data)
	}
	status := grpcStatusOf(res.Header, res.Trailer)
	if protocol == "grpc-web" && status.Get("Grpc-Status") == "" {
		status = grpcWebTrailer(t, data)
	}
	code, err := strconv.Atoi(status.Get("Grpc-Status"))
	if err != nil {
		t.Fatalf("no grpc-status: headers %v trailers %v body %q", res.Header, res.Trailer, data)
	}
	msg, _ := url.PathUnescape(status.Get("Grpc-Message"))
	return connect.Code(code), msg //nolint:gosec // a small status code
}

// grpcStatusOf returns the status headers, from the trailers or, in a
// trailers-only response, the headers (any case).
func grpcStatusOf(header, trailer http.Header) http.Header {
	out := http.Header{}
	for _, h := range []http.Header{header, trailer} {
		for k, v := range h {
			name := http.CanonicalHeaderKey(k)
			if (name == "Grpc-Status" || name == "Grpc-Message") && len(v) > 0 {
				out.Set(name, v[0])
			}
		}
	}
	return out
}

// grpcWebTrailer reads the trailer frame that ends a gRPC-Web body.
func grpcWebTrailer(t *testing.T, data []byte) http.Header {
	t.Helper()
	for len(data) >= 5 {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if len(data) < 5+n {
			break
		}
		if data[0]&0x80 != 0 {
			out := http.Header{}
			for line := range strings.SplitSeq(string(data[5:5+n]), "\r\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					out.Set(strings.TrimSpace(k), strings.TrimSpace(v))
				}
			}
			return out
		}
		data = data[5+n:]
	}
	t.Fatalf("gRPC-Web body has no trailer frame")
	return nil
}
