package runtimesvc

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/httpbody"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// Webhook request headers (lower case, as the gateway passes them).
const (
	headerSignature   = "x-flowgate-signature"
	headerTimestamp   = "x-flowgate-timestamp"
	headerIdempotency = "idempotency-key"
	signaturePrefix   = "sha256="
	maxIdempotencyKey = 255
)

// TriggerWebhook runs the deployment whose webhook trigger owns the path.
// The path is the tenant's webhook namespace followed by the trigger's
// path. A trigger with a secret requires X-Flowgate-Signature = "sha256=" +
// hex(HMAC-SHA256(secret, timestamp + "." + raw body)) and an
// X-Flowgate-Timestamp (Unix seconds) within the tolerance, and accepts
// each signature once; otherwise the request is Unauthenticated and
// nothing runs.
func (s *Service) TriggerWebhook(ctx context.Context, req *connect.Request[runtimev1.TriggerWebhookRequest]) (*connect.Response[runtimev1.TriggerWebhookResponse], error) {
	msg := req.Msg
	d, wh, err := s.webhookTarget(ctx, msg.GetPath())
	if err != nil {
		return nil, err
	}
	l, err := s.webhookLaunch(ctx, d, wh, msg)
	if err != nil {
		return nil, err
	}
	st, prev, err := s.start(ctx, l)
	if err != nil {
		return nil, s.internal(ctx, "start execution", err)
	}
	if prev != nil {
		return s.replay(ctx, prev, wh)
	}
	return s.answer(ctx, st, wh)
}

// webhookLaunch checks a webhook request for its deployment and turns it
// into a launch. The signature is spent last, once nothing else refuses
// the request.
func (s *Service) webhookLaunch(ctx context.Context, d *deployment, wh *runtimev1.Trigger, msg *runtimev1.TriggerWebhookRequest) (launch, error) {
	headers := msg.GetHeaders()
	var sig signature
	if wh.GetSecret() != "" {
		var err error
		if sig, err = s.verifySignature(wh.GetSecret(), headers, msg.GetBody().GetData()); err != nil {
			return launch{}, err
		}
	}
	if d.status != deploymentActive {
		return launch{}, errPaused()
	}
	key := headers[headerIdempotency]
	if len(key) > maxIdempotencyKey {
		return launch{}, invalid("headers.idempotency-key", "must be at most %d characters", maxIdempotencyKey)
	}
	data, err := webhookTriggerData(wh.GetPath(), msg)
	if err != nil {
		return launch{}, err
	}
	if sig.mac != "" {
		if err := s.spendSignature(ctx, d.id, sig); err != nil {
			return launch{}, err
		}
	}
	return launch{d: d, triggerType: triggerWebhook, triggerData: data, idemKey: key, requestHash: webhookRequestHash(msg)}, nil
}

// webhookRequestHash binds an idempotency key to the request's method and
// every query value too: requestHash sees the first value of each query
// parameter only. A POST without a query string hashes as it always has.
func webhookRequestHash(msg *runtimev1.TriggerWebhookRequest) string {
	base := requestHash(msg)
	method := strings.ToUpper(msg.GetMethod())
	if (method == "" || method == http.MethodPost) && msg.GetRawQuery() == "" {
		return base
	}
	h := sha256.New()
	writeField(h, []byte(base))
	writeField(h, []byte(method))
	writeField(h, []byte(msg.GetRawQuery()))
	return hex.EncodeToString(h.Sum(nil))
}

// webhookTarget finds the deployment a webhook path names: the first
// segment is a tenant's namespace, the rest the trigger's path.
func (s *Service) webhookTarget(ctx context.Context, raw string) (*deployment, *runtimev1.Trigger, error) {
	full := normalizeWebhookPath(raw)
	if hasDotSegment(full) {
		return nil, nil, invalid("path", "must not have '.' or '..' segments")
	}
	ns, path, ok := strings.Cut(full, "/")
	if !ok {
		return nil, nil, notFound("webhook", full)
	}
	d, err := s.repo.deploymentByHook(ctx, ns, path)
	if err != nil {
		return nil, nil, s.lookupError(ctx, "webhook", full, err)
	}
	wh := findTrigger(d.triggers, triggerWebhook)
	if wh == nil { // the path row and the triggers are written together
		return nil, nil, notFound("webhook", full)
	}
	return d, wh, nil
}

// answer is what the sender gets for a started execution: 202 at once
// (async), or (wait) the respond node's answer as soon as it runs, while
// the rest of the workflow goes on; without a respond node, the outcome
// when the run finishes in time.
func (s *Service) answer(ctx context.Context, st *started, wh *runtimev1.Trigger) (*connect.Response[runtimev1.TriggerWebhookResponse], error) {
	if wh.GetResponseMode() != modeWait {
		return statusResponse(st.e.id, statusRunning, http.StatusAccepted), nil
	}
	timeout := s.defaultResponseTimeout
	if rt := wh.GetResponseTimeout(); rt != nil {
		timeout = rt.AsDuration()
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-st.responded:
	case <-t.C:
		return statusResponse(st.e.id, statusRunning, http.StatusAccepted), nil
	case <-ctx.Done():
		return nil, s.internal(ctx, "wait for execution", ctx.Err())
	}
	select {
	case <-st.done:
		return finishedResponse(st.e), nil
	default:
	}
	if st.resp == nil { // the run is ending without a respond node
		if !waitFor(ctx, st, timeout) {
			return statusResponse(st.e.id, statusRunning, http.StatusAccepted), nil
		}
		return finishedResponse(st.e), nil
	}
	return connect.NewResponse(respondNodeResponse(&execution{id: st.e.id, status: statusRunning}, st.resp)), nil
}

func errPaused() error {
	// 409: the request is fine; the deployment's state refuses it.
	return connect.NewError(connect.CodeAborted, errors.New("the deployment is paused"))
}

// signature is a verified webhook signature: the MAC in lower-case hex
// (however the sender spelled it) and the time it was made for.
type signature struct {
	mac string
	at  time.Time
}

func (s *Service) verifySignature(secret string, headers map[string]string, body []byte) (signature, error) {
	sig, ts := headers[headerSignature], headers[headerTimestamp]
	if sig == "" || ts == "" {
		return signature{}, unauthenticated("the webhook requires X-Flowgate-Signature and X-Flowgate-Timestamp headers")
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(ts), 10, 64)
	if err != nil {
		return signature{}, unauthenticated("X-Flowgate-Timestamp must be Unix seconds")
	}
	if skew := time.Since(time.Unix(sec, 0)); skew > s.tolerance || skew < -s.tolerance {
		return signature{}, unauthenticated("X-Flowgate-Timestamp is outside the allowed tolerance")
	}
	got, ok := strings.CutPrefix(strings.TrimSpace(sig), signaturePrefix)
	raw, err := hex.DecodeString(got)
	if !ok || err != nil {
		return signature{}, unauthenticated("X-Flowgate-Signature must be sha256=<hex>")
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(strings.TrimSpace(ts)))
	mac.Write([]byte{'.'})
	mac.Write(body)
	if !hmac.Equal(raw, mac.Sum(nil)) {
		return signature{}, unauthenticated("the webhook signature does not match")
	}
	return signature{mac: hex.EncodeToString(raw), at: time.Unix(sec, 0)}, nil
}

func unauthenticated(msg string) error {
	return connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
}

// webhookTriggerData is what the workflow's trigger node receives:
// {method, path, headers, query, query_values, content_type, user_agent,
// body}. A JSON body is parsed, a form body (urlencoded or multipart)
// becomes an object of its fields; any other body is passed as text (or
// base64 when it is not UTF-8). query holds the first value of each
// parameter, query_values all of them.
func webhookTriggerData(path string, msg *runtimev1.TriggerWebhookRequest) (*structpb.Struct, error) {
	body, err := decodeWebhookBody(msg.GetBody())
	if err != nil {
		return nil, err
	}
	headers := make(map[string]any, len(msg.GetHeaders())+1)
	for k, v := range msg.GetHeaders() {
		if k == headerSignature {
			continue // no use to the workflow; keep it out of the history
		}
		headers[k] = v
	}
	contentType := msg.GetBody().GetContentType()
	if contentType != "" {
		headers["content-type"] = contentType
	}
	query, values, err := webhookQuery(msg)
	if err != nil {
		return nil, err
	}
	method := strings.ToUpper(msg.GetMethod())
	if method == "" {
		method = http.MethodPost
	}
	data, err := structpb.NewStruct(map[string]any{
		"method": method, "path": path, "headers": headers, "query": query, "query_values": values,
		"content_type": contentType, "user_agent": msg.GetHeaders()["user-agent"], "body": body,
	})
	if err != nil {
		return nil, invalid("body", "cannot be represented: %v", err)
	}
	return data, nil
}

// webhookQuery reads the query parameters: from the raw query string when
// the gateway passed it (every value of a repeated parameter), else from
// the first-value map.
func webhookQuery(msg *runtimev1.TriggerWebhookRequest) (map[string]any, map[string]any, error) {
	first := make(map[string]any, len(msg.GetQuery()))
	all := make(map[string]any, len(msg.GetQuery()))
	for k, v := range msg.GetQuery() {
		first[k], all[k] = v, []any{v}
	}
	if msg.GetRawQuery() == "" {
		return first, all, nil
	}
	parsed, err := url.ParseQuery(msg.GetRawQuery())
	if err != nil {
		return nil, nil, invalid("raw_query", "is not a query string: %v", err)
	}
	for k, vals := range parsed {
		if _, set := first[k]; !set && len(vals) > 0 {
			first[k] = vals[0]
		}
		all[k] = stringsToAny(vals)
	}
	return first, all, nil
}

func stringsToAny(vals []string) []any {
	out := make([]any, len(vals))
	for i, v := range vals {
		out[i] = v
	}
	return out
}

// maxFormParts bounds the parts of a multipart body the workflow sees.
const maxFormParts = 1000

func decodeWebhookBody(b *httpbody.HttpBody) (any, error) {
	data := b.GetData()
	if len(data) == 0 {
		return nil, nil
	}
	mt, params, _ := mime.ParseMediaType(b.GetContentType())
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return nil, invalid("body", "is not valid JSON: %v", err)
		}
		return v, nil
	case mt == "application/x-www-form-urlencoded":
		vals, err := url.ParseQuery(string(data))
		if err != nil {
			return nil, invalid("body", "is not a valid form: %v", err)
		}
		return formFields(vals, nil), nil
	case mt == "multipart/form-data":
		return decodeMultipart(data, params["boundary"])
	}
	return textOrBase64(data), nil
}

func textOrBase64(data []byte) any {
	if utf8.Valid(data) {
		return string(data)
	}
	return map[string]any{"base64": base64Std(data)}
}

// formFields is a form as an object: a field sent once is a string, a
// field sent more than once a list, a file {filename, content_type, size,
// content} (content as text, or {base64} when it is not UTF-8).
func formFields(vals url.Values, files map[string][]any) map[string]any {
	out := make(map[string]any, len(vals)+len(files))
	for k, vs := range vals {
		if len(vs) == 1 {
			out[k] = vs[0]
		} else {
			out[k] = stringsToAny(vs)
		}
	}
	for k, fs := range files {
		if len(fs) == 1 {
			out[k] = fs[0]
		} else {
			out[k] = fs
		}
	}
	return out
}

func decodeMultipart(data []byte, boundary string) (any, error) {
	if boundary == "" {
		return nil, invalid("body", "multipart/form-data needs a boundary parameter")
	}
	r := multipart.NewReader(bytes.NewReader(data), boundary)
	vals, files := url.Values{}, map[string][]any{}
	for n := 0; ; n++ {
		part, err := r.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, invalid("body", "is not valid multipart/form-data: %v", err)
		}
		if n == maxFormParts {
			return nil, invalid("body", "has more than %d form parts", maxFormParts)
		}
		content, err := io.ReadAll(part) // bounded by the request's size limit
		if err != nil {
			return nil, invalid("body", "is not valid multipart/form-data: %v", err)
		}
		name := part.FormName()
		if name == "" {
			continue
		}
		if part.FileName() == "" {
			vals.Add(name, string(content))
			continue
		}
		files[name] = append(files[name], map[string]any{
			"filename": part.FileName(), "content_type": part.Header.Get("Content-Type"),
			"size": float64(len(content)), "content": textOrBase64(content),
		})
	}
	return formFields(vals, files), nil
}

// replay answers a retried request with the execution it first started. A
// waiting sender whose execution still runs here is answered as the first
// request was, by the respond node or the outcome.
func (s *Service) replay(ctx context.Context, prev *execution, wh *runtimev1.Trigger) (*connect.Response[runtimev1.TriggerWebhookResponse], error) {
	if prev.status == statusRunning {
		s.mu.Lock()
		st := s.active[prev.id]
		s.mu.Unlock()
		if st != nil {
			return s.answer(ctx, st, wh)
		}
		return statusResponse(prev.id, statusRunning, http.StatusAccepted), nil
	}
	if wh.GetResponseMode() == modeWait {
		return finishedResponse(prev), nil
	}
	return statusResponse(prev.id, prev.status, http.StatusOK), nil
}

// finishedResponse is what a waiting caller gets: the respond node's
// response when one ran, else the execution's id and status.
func finishedResponse(e *execution) *connect.Response[runtimev1.TriggerWebhookResponse] {
	wr := e.result.GetWebhookResponse()
	if wr == nil {
		code := http.StatusOK
		if e.status != "succeeded" {
			code = http.StatusInternalServerError
		}
		return statusResponse(e.id, e.status, code)
	}
	return connect.NewResponse(respondNodeResponse(e, wr))
}

func respondNodeResponse(e *execution, wr *enginev1.WebhookResponse) *runtimev1.TriggerWebhookResponse {
	headers := make(map[string]string, len(wr.GetHeaders()))
	contentType := ""
	for k, v := range wr.GetHeaders() {
		if strings.EqualFold(k, "content-type") {
			contentType = v
			continue
		}
		headers[strings.ToLower(k)] = v
	}
	var data []byte
	switch body := wr.GetBody(); body.GetKind().(type) {
	case nil, *structpb.Value_NullValue:
	case *structpb.Value_StringValue:
		data = []byte(body.GetStringValue())
		if contentType == "" {
			contentType = "text/plain; charset=utf-8"
		}
	default:
		data, _ = protojson.Marshal(body)
		if contentType == "" {
			contentType = "application/json"
		}
	}
	code := wr.GetStatusCode()
	if code == 0 {
		code = http.StatusOK
	}
	return &runtimev1.TriggerWebhookResponse{
		ExecutionId: e.id,
		Status:      e.status,
		Body:        &httpbody.HttpBody{ContentType: contentType, Data: data},
		StatusCode:  code,
		Headers:     headers,
	}
}

// statusResponse is the JSON document {"execution_id", "status"}.
func statusResponse(id, status string, code int) *connect.Response[runtimev1.TriggerWebhookResponse] {
	doc, _ := json.Marshal(map[string]string{"execution_id": id, "status": status})
	return connect.NewResponse(&runtimev1.TriggerWebhookResponse{
		ExecutionId: id,
		Status:      status,
		Body:        &httpbody.HttpBody{ContentType: "application/json", Data: doc},
		StatusCode:  int32(code), //nolint:gosec // an HTTP status code
	})
}

// Sign computes the X-Flowgate-Signature value of a webhook request, for
// senders written in Go and for tests.
func Sign(secret string, timestamp int64, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	_, _ = fmt.Fprintf(mac, "%d.", timestamp)
	mac.Write(body)
	return signaturePrefix + hex.EncodeToString(mac.Sum(nil))
}
