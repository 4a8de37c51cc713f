package server

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// webhookHooks fill in what a webhook's HTTP request carries beyond its path
// and body: the transcoder maps neither headers nor arbitrary query
// parameters onto the request message, and the runtime needs both (the
// signature, timestamp and idempotency key travel in headers).
func webhookHooks() map[string]methodHooks {
	return map[string]methodHooks{
		runtimev1connect.WorkflowRuntimeServiceTriggerWebhookProcedure: {
			request:  webhookRequest,
			response: webhookResponse,
		},
	}
}

func webhookRequest(in, out *connect.Request[frame]) error {
	var msg runtimev1.TriggerWebhookRequest
	if err := proto.Unmarshal(in.Msg.data, &msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, errorText("malformed webhook request"))
	}
	if msg.Headers == nil {
		msg.Headers = make(map[string]string, len(in.Header()))
	}
	for name, vals := range in.Header() {
		if len(vals) == 0 || neverForwarded(name) || strings.HasPrefix(name, "X-Flowgate-") && !isWebhookHeader(name) {
			continue
		}
		key, val := strings.ToLower(name), strings.Join(vals, ", ")
		if !utf8.ValidString(val) {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("header %s is not valid UTF-8", name))
		}
		if _, set := msg.Headers[key]; !set {
			msg.Headers[key] = val
		}
	}
	if msg.Method == "" {
		msg.Method = in.Header().Get(webhookMethodHeader)
	}
	if ua := in.Header().Get(webhookAgentHeader); ua != "" && utf8.ValidString(ua) {
		msg.Headers["user-agent"] = ua
	}
	if raw := in.Header().Get(webhookQueryHeader); raw != "" {
		if msg.RawQuery == "" {
			msg.RawQuery = raw
		}
		values, err := url.ParseQuery(raw)
		if err != nil {
			return connect.NewError(connect.CodeInvalidArgument, errorText("malformed query string"))
		}
		if msg.Query == nil {
			msg.Query = make(map[string]string, len(values))
		}
		for key, vals := range values {
			if !utf8.ValidString(key) || !utf8.ValidString(strings.Join(vals, "")) {
				return connect.NewError(connect.CodeInvalidArgument, errorText("the query string is not valid UTF-8"))
			}
			if _, set := msg.Query[key]; !set && len(vals) > 0 {
				msg.Query[key] = vals[0]
			}
		}
	}
	data, err := proto.Marshal(&msg)
	if err != nil {
		// Only what the caller sent can fail to encode (invalid UTF-8).
		return connect.NewError(connect.CodeInvalidArgument, errorText("the webhook request cannot be encoded: "+protoErrorText(err)))
	}
	out.Msg = &frame{data: data}
	return nil
}

// isWebhookHeader lets the webhook signature headers through although they
// share the prefix of the gateway's own headers.
func isWebhookHeader(name string) bool {
	return name == "X-Flowgate-Signature" || name == "X-Flowgate-Timestamp"
}

func webhookResponse(res *connect.Response[frame]) error {
	var msg runtimev1.TriggerWebhookResponse
	if err := proto.Unmarshal(res.Msg.data, &msg); err != nil {
		return connect.NewError(connect.CodeInternal, errorText("malformed webhook response"))
	}
	h := res.Header()
	if msg.GetExecutionId() != "" {
		h.Set("X-Flowgate-Execution-Id", msg.GetExecutionId())
	}
	for name, val := range msg.GetHeaders() {
		name = http.CanonicalHeaderKey(name)
		if !neverForwarded(name) && !strings.HasPrefix(name, "X-Flowgate-") {
			h.Set(name, val)
		}
	}
	if code := msg.GetStatusCode(); code >= 200 && code < 600 && code != http.StatusOK {
		h.Set(statusHeader, strconv.Itoa(int(code)))
	}
	return nil
}
