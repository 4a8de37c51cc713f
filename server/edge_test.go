package server

import (
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// The protocol edge table: each row is one situation at the gateway's edge,
// sent in the form each protocol has for it, and the answer every protocol
// must give. A row leaves out the protocols the situation does not exist
// on. To add a case, add a row; the runners (edge_runners_test.go) do the
// rest, one per protocol.

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
		// http.ServeMux would redirect to /deployments/run, another resource.
		name: "empty path segment",
		rest: &restEdge{method: "POST", path: "/api/v1/workflow/deployments//run", body: `{}`},
		want: edgeWant{status: 404, restCode: "NOT_FOUND", message: "no route for POST /api/v1/workflow/deployments//run"},
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
		// The transcoder would keep the last value and drop the others.
		name: "query parameter given twice",
		rest: &restEdge{method: "GET", path: "/api/v1/executions?page_size=5&status=running&page_size=7"},
		sse:  &sseEdge{path: "/api/v1/chat/stream?session_id=s&session_id=t&user_message=hi"},
		want: edgeWant{status: 400, restCode: "VALIDATION_ERROR", message: "invalid page_size: given more than once", detail: "field"},
		per: map[string]edgeWant{
			"sse": {status: 400, restCode: "VALIDATION_ERROR", message: "Invalid request parameters", detail: "field"},
		},
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
		// A gRPC caller's connection is grpc-go's, which answers this itself.
		per: map[string]edgeWant{"grpc": {code: connect.CodeResourceExhausted, message: "larger than max"}},
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
		// On a 429 EventSource would stop for good: a stream is told in
		// an event, with retry advice.
		per: map[string]edgeWant{"sse": {restCode: "RATE_LIMITED", message: "rate limit exceeded", inStream: true, detail: "retry_after_seconds"}},
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
var edgeProtocols = []string{"connect-json", "connect-proto", "grpc", "grpc-web", "grpc-web-text"}

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
