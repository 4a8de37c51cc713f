package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/flowgate/flowgate/internal/apierr"
	"github.com/flowgate/flowgate/sse"
)

// isRPCRequest reports whether a request speaks Connect, gRPC or gRPC-Web,
// by the same rules the transcoder classifies it: everything else is REST.
func isRPCRequest(r *http.Request) bool {
	ct := headerValue(r.Header, "Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc"), strings.HasPrefix(ct, "application/connect+"):
		return true
	case headerValue(r.Header, "Connect-Protocol-Version") == "1":
		return true
	case r.Method == http.MethodGet && strings.Contains(r.URL.RawQuery, "connect=v1"):
		return r.URL.Query().Get("connect") == "v1"
	}
	return false
}

// callerProtocol names the protocol a request speaks, for logs.
func callerProtocol(r *http.Request) string {
	ct := headerValue(r.Header, "Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc-web"):
		return "grpcweb"
	case strings.HasPrefix(ct, "application/grpc"):
		return "grpc"
	case isRPCRequest(r):
		return "connect"
	case ssePaths[r.URL.Path]:
		return sse.Protocol
	}
	return "rest"
}

// webhookQueryHeader carries a webhook request's query string from the REST
// layer to the webhook forwarder: the transcoder maps query parameters only
// onto scalar fields, and a webhook's parameters are arbitrary.
const webhookQueryHeader = "X-Flowgate-Webhook-Query"

// webhookMethodHeader and webhookAgentHeader carry a webhook request's
// method and User-Agent the same way: the transcoder turns a GET into a
// POST and sends its own User-Agent.
const (
	webhookMethodHeader = "X-Flowgate-Webhook-Method"
	webhookAgentHeader  = "X-Flowgate-Webhook-Agent"
)

// statusHeader carries the HTTP status a forwarder asks for (a webhook's
// respond node) to the REST layer, which removes it from the response.
const statusHeader = "X-Flowgate-Http-Status"

const webhookPrefix = "/api/v1/webhooks/"

// restLayer gives REST callers the contract's error shape and status for
// every error the transcoder or a forwarder produces, including unknown
// routes and wrong methods; it also settles, in front of the transcoder,
// what the transcoder gets wrong at the edge (see edge.go). RPC callers get
// their protocol's error shape for the transcoder's own refusals.
// maxBody is the request body limit, named in size errors; lists are the
// query parameters that may be repeated (see listParams).
func restLayer(next http.Handler, fast *restFast, maxBody int64, lists map[string]bool) http.Handler {
	errs := newErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Internal headers are the gateway's own; no caller may set them.
		// (The names are canonical: no Del to canonicalize them again.)
		delete(r.Header, webhookQueryHeader)
		delete(r.Header, webhookMethodHeader)
		delete(r.Header, webhookAgentHeader)
		delete(r.Header, statusHeader)
		if err := checkEdgeHeaders(r); err != nil {
			errs.write(w, r, err)
			return
		}
		if isRPCRequest(r) {
			prepareConnect(r)
			rw := newRPCWriter(w, r, errs.rpc)
			next.ServeHTTP(rw, r)
			rw.finish()
			return
		}
		rw := newRESTWriter(w, headerValue(r.Header, "Content-Type"), maxBody)
		if r.Method == http.MethodHead && !strings.HasPrefix(r.URL.Path, webhookPrefix) {
			// HEAD is GET without the content (RFC 9110, 9.3.2); the
			// server under this handler knows the request as HEAD and
			// sends no body, whatever is written. A webhook gets the
			// method it was called with.
			r = r.WithContext(r.Context())
			r.Method = http.MethodGet
		}
		u := prepareREST(r)
		if err := checkQueryRepeats(u.RawQuery, lists); err != nil {
			errs.write(w, r, err)
			return
		}
		rw.ctx = restContext{Context: r.Context(), trace: &rw.trace}
		ctx := &rw.ctx
		// The direct path takes what it needs from r as it is: a copy
		// of r is only for the transcoder, which reads the prepared URL.
		if !fast.serve(ctx, rw, r, u) {
			r = r.WithContext(ctx)
			r.URL = u
			next.ServeHTTP(rw, r)
		}
		rw.finish()
	})
}

// maxErrorBody bounds what is kept of an error body to reshape it.
const maxErrorBody = 64 << 10

// restWriter holds back an error response so that it can be rewritten in the
// contract's shape; successful responses pass through.
type restWriter struct {
	holdingWriter
	err error // an error handed over whole, see fail
	// answer is an error to write as it is, see failWith.
	answer *apierr.Error
	trace  restTrace // what the RPC level saw, see restTraceInterceptor
	ctx    restContext
	conn   restConn // the direct path's call, see restFast
	// contentType is the request's, to name it when it is refused.
	contentType string
	maxBody     int64
}

func newRESTWriter(w http.ResponseWriter, contentType string, maxBody int64) *restWriter {
	rw := restWriterOf(w)
	*rw = restWriter{holdingWriter: holdingWriter{ResponseWriter: w, limit: maxErrorBody}, contentType: contentType, maxBody: maxBody}
	rw.owner = rw
	return rw
}

// decide holds back errors, and gives a success the status a forwarder
// asked for (a webhook's respond node).
func (w *restWriter) decide(code int) (int, bool) {
	h := w.Header()
	asked := headerValue(h, statusHeader)
	delete(h, statusHeader)
	if code >= 400 {
		return code, true
	}
	if asked == "" {
		return code, false // and no error for Atoi to allocate
	}
	if n, err := strconv.Atoi(asked); err == nil && code == http.StatusOK && n >= 200 && n < 600 {
		code = n
	}
	return code, false
}

// Flush is held back. A REST response is one message, written whole before
// the handler returns; flushing it early, as the transcoder does, would make
// net/http send it chunked in two writes where it otherwise sends one with a
// Content-Length.
func (w *restWriter) Flush() {}

// fail hands the REST layer an error to write in place of the response.
func (w *restWriter) fail(err error) {
	if w.passed || w.held != 0 {
		return
	}
	w.err = err
	w.held = http.StatusInternalServerError // held: later writes are dropped
}

// failWith hands the REST layer the error to answer with, as it is.
func (w *restWriter) failWith(e *apierr.Error) {
	if w.passed || w.held != 0 {
		return
	}
	w.answer = e
	w.held = http.StatusInternalServerError // held: later writes are dropped
}

// finish writes the held-back error, if any, in the contract's shape,
// without the protocol headers and trailers the handler behind the
// transcoder left in the shared header map.
func (w *restWriter) finish() {
	if w.held == 0 {
		return
	}
	h := w.Header()
	dropProtocolHeaders(h)
	if allow := h.Get("Allow"); w.held == http.StatusMethodNotAllowed && allow != "" {
		h.Set("Allow", allowed(allow))
	}
	err := w.reshape()
	for name, vals := range w.trace.meta {
		if !neverForwarded(name) {
			h[name] = vals
		}
	}
	err.Write(w.ResponseWriter)
}

// allowed is the transcoder's Allow list in a fixed order, with HEAD
// wherever GET is served (see restLayer).
func allowed(allow string) string {
	methods := strings.Split(allow, ",")
	if slices.Contains(methods, http.MethodGet) && !slices.Contains(methods, http.MethodHead) {
		methods = append(methods, http.MethodHead)
	}
	slices.Sort(methods)
	return strings.Join(methods, ",")
}

// reshape turns what was held back into the contract's error. The
// handler's own error is used as returned, with the metadata and marks the
// transcoder's rendering drops; the transcoder's own errors are read back
// from its google.rpc.Status or its plain text.
func (w *restWriter) reshape() *apierr.Error {
	switch {
	case w.answer != nil:
		return w.answer
	case w.err != nil:
		return apierr.FromError(asConnectError(w.err))
	case w.trace.err != nil:
		return apierr.FromError(asConnectError(w.trace.err))
	}
	ce := parseStatusJSON(w.body.Bytes())
	if err := parameterError(ce); err != nil {
		return apierr.FromError(err)
	}
	switch {
	case ce != nil && ce.Code() == connect.CodeResourceExhausted && w.trace.answered:
		// The forwarder returned a response the transcoder could not hold:
		// the upstream's fault, not the caller's nor a rate limit.
		return upstreamTooLarge()
	case ce != nil && ce.Code() == connect.CodeResourceExhausted:
		return apierr.New(http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", w.maxBody))
	case !w.trace.reached && (ce != nil && serverSide(ce.Code()) || ce == nil && w.held == http.StatusInternalServerError):
		// The transcoder could not map the request onto a message (a query
		// parameter naming no field, a value that does not parse): the
		// caller's mistake, though the transcoder reports it as internal.
		return apierr.New(http.StatusBadRequest, "invalid request: "+safeMessage(ce, w.body.String()))
	case ce != nil:
		return apierr.FromError(ce)
	}
	msg := strings.TrimSpace(w.body.String())
	if w.held == http.StatusUnsupportedMediaType && !strings.Contains(msg, "compression") {
		msg = fmt.Sprintf("unsupported Content-Type %q: send application/json", w.contentType)
	}
	if w.held >= 500 || strings.Contains(msg, "\n") || len(msg) > 200 {
		msg = "" // never show a transcoder's internals
	}
	return apierr.New(w.held, msg)
}

// upstreamTooLarge is the REST error for an upstream response larger than
// the gateway holds.
func upstreamTooLarge() *apierr.Error {
	return apierr.New(http.StatusBadGateway, "the upstream's response exceeds the gateway's size limit")
}

// parameterError rewords the transcoder's errors for a query or path
// parameter as the gateway's own validation errors read, naming the
// parameter: a value that does not parse (`invalid parameter "page":
// invalid character 'a' looking for beginning of value`, a JSON decoder's
// words) or a parameter naming no field (which names the message type).
// It returns nil for other errors.
func parameterError(ce *connect.Error) error {
	if ce == nil {
		return nil
	}
	for _, p := range []struct{ prefix, reason string }{
		{"invalid parameter ", "not a valid value for this parameter"},
		{"unknown field in field path ", "unknown query parameter"},
	} {
		rest, ok := strings.CutPrefix(ce.Message(), p.prefix)
		if !ok {
			continue
		}
		if quoted, err := strconv.QuotedPrefix(rest); err == nil {
			field, _ := strconv.Unquote(quoted)
			return badRequest(field, p.reason)
		}
	}
	return nil
}

// parseStatusJSON reads the google.rpc.Status the transcoder writes for a
// REST error back into a coded error.
func parseStatusJSON(body []byte) *connect.Error {
	// Not by Content-Type: the handler behind the transcoder may have set
	// its own (application/grpc) in the shared header map before the
	// transcoder wrote the error.
	if len(body) == 0 || body[0] != '{' {
		return nil
	}
	var stat status.Status
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &stat); err != nil {
		// Details of a type this binary does not know: keep code and message.
		var plain struct {
			Code    int32  `json:"code"`
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &plain) != nil || plain.Code == 0 {
			return nil
		}
		stat.Code, stat.Message = plain.Code, plain.Message
	}
	if stat.GetCode() == 0 {
		return nil
	}
	ce := connect.NewWireError(connect.Code(stat.GetCode()), errorText(stat.GetMessage())) //nolint:gosec // codes are small
	for _, detail := range stat.GetDetails() {
		msg, err := anypb.UnmarshalNew(detail, proto.UnmarshalOptions{})
		if err != nil {
			continue
		}
		if d, err := connect.NewErrorDetail(msg); err == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

type restTraceKey struct{}

// restContext is context.WithValue(ctx, restTraceKey{}, trace) without an
// allocation of its own: it lives in the REST layer's writer.
type restContext struct {
	context.Context
	trace *restTrace
}

func (c *restContext) Value(key any) any {
	if _, ok := key.(restTraceKey); ok {
		return c.trace
	}
	return c.Context.Value(key)
}

// restTrace is what the RPC level tells the REST layer about a call.
type restTrace struct {
	// reached is set once the call got through to the interceptors, that is
	// once the transcoder had mapped the request onto a message.
	reached bool
	// meta is the metadata of the call's error: the transcoder renders a
	// REST error from the status alone and drops its metadata, which
	// carries what REST callers need too (Retry-After, an upstream's
	// headers).
	meta http.Header
	// err is the call's error as the handler returned it.
	err error
	// answered is set when the handler returned a response.
	answered bool
}

// restTraceInterceptor fills in the REST layer's restTrace of a call.
func restTraceInterceptor() connect.Interceptor {
	return restTracer{}
}

type restTracer struct{}

func (restTracer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		trace := traceOf(ctx)
		res, err := next(ctx, req)
		trace.record(err)
		return res, err
	}
}

func (restTracer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (restTracer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		trace := traceOf(ctx)
		err := next(ctx, conn)
		trace.record(err)
		return err
	}
}

// traceOf marks the call as reached and returns its trace, if the REST
// layer asked for one.
func traceOf(ctx context.Context) *restTrace {
	trace, ok := ctx.Value(restTraceKey{}).(*restTrace)
	if !ok {
		return nil
	}
	trace.reached = true
	return trace
}

func (t *restTrace) record(err error) {
	if t == nil {
		return
	}
	t.err, t.answered = err, err == nil
	var ce *connect.Error
	if errors.As(err, &ce) && len(ce.Meta()) > 0 {
		t.meta = ce.Meta().Clone()
	}
}

func serverSide(code connect.Code) bool {
	return code == connect.CodeInternal || code == connect.CodeUnknown
}

// safeMessage returns the message of a transcoder error when it is short
// and plain enough to show.
func safeMessage(ce *connect.Error, body string) string {
	msg := strings.TrimSpace(body)
	if ce != nil {
		msg = ce.Message()
	}
	if msg == "" || len(msg) > 200 || strings.ContainsAny(msg, "\n\t") {
		return "the request does not map onto the operation's parameters"
	}
	return msg
}
