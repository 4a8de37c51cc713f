package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// isRPCRequest reports whether a request speaks Connect, gRPC or gRPC-Web,
// by the same rules the transcoder classifies it: everything else is REST.
func isRPCRequest(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc"), strings.HasPrefix(ct, "application/connect+"):
		return true
	case r.Header.Get("Connect-Protocol-Version") == "1":
		return true
	case r.Method == http.MethodGet && strings.Contains(r.URL.RawQuery, "connect=v1"):
		return r.URL.Query().Get("connect") == "v1"
	}
	return false
}

// callerProtocol names the protocol a request speaks, for logs.
func callerProtocol(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc-web"):
		return "grpcweb"
	case strings.HasPrefix(ct, "application/grpc"):
		return "grpc"
	case isRPCRequest(r):
		return "connect"
	}
	return "rest"
}

// webhookQueryHeader carries a webhook request's query string from the REST
// layer to the webhook forwarder: the transcoder maps query parameters only
// onto scalar fields, and a webhook's parameters are arbitrary.
const webhookQueryHeader = "X-Flowgate-Webhook-Query"

// statusHeader carries the HTTP status a forwarder asks for (a webhook's
// respond node) to the REST layer, which removes it from the response.
const statusHeader = "X-Flowgate-Http-Status"

const webhookPrefix = "/api/v1/webhooks/"

// restLayer gives REST callers the contract's error shape and status for
// every error the transcoder or a forwarder produces, including unknown
// routes and wrong methods. RPC callers pass through untouched.
func restLayer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Internal headers are the gateway's own; no caller may set them.
		r.Header.Del(webhookQueryHeader)
		r.Header.Del(statusHeader)
		if isRPCRequest(r) {
			next.ServeHTTP(w, r)
			return
		}
		if strings.HasPrefix(r.URL.Path, webhookPrefix) && r.URL.RawQuery != "" {
			r = r.WithContext(r.Context())
			u := *r.URL
			r.Header.Set(webhookQueryHeader, u.RawQuery)
			u.RawQuery = ""
			r.URL = &u
		}
		rw := &restWriter{ResponseWriter: w}
		next.ServeHTTP(rw, r.WithContext(context.WithValue(r.Context(), restErrorMetaKey{}, &rw.errMeta)))
		rw.finish()
	})
}

// maxErrorBody bounds what is kept of an error body to reshape it.
const maxErrorBody = 64 << 10

// restWriter holds back an error response so that it can be rewritten in the
// contract's shape; successful responses stream through, flushes included.
type restWriter struct {
	http.ResponseWriter
	errStatus int // the error status held back; 0 while passing through
	body      bytes.Buffer
	wrote     bool
	errMeta   http.Header // the metadata of the RPC error, see errorMetaInterceptor
}

func (w *restWriter) WriteHeader(code int) {
	if w.wrote || w.errStatus != 0 {
		return
	}
	h := w.Header()
	asked := h.Get(statusHeader)
	h.Del(statusHeader)
	if code >= 400 {
		w.errStatus = code
		return
	}
	if n, err := strconv.Atoi(asked); err == nil && code == http.StatusOK && n >= 200 && n < 600 {
		code = n
	}
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *restWriter) Write(p []byte) (int, error) {
	if !w.wrote && w.errStatus == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.errStatus != 0 {
		if room := maxErrorBody - w.body.Len(); room > 0 {
			w.body.Write(p[:min(len(p), room)])
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

func (w *restWriter) Flush() {
	if w.errStatus != 0 {
		return
	}
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(w.ResponseWriter).Flush() //nolint:errcheck // nothing to do about a failed flush
}

func (w *restWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish writes the held-back error, if any, in the contract's shape.
func (w *restWriter) finish() {
	if w.errStatus == 0 {
		return
	}
	for name, vals := range w.errMeta {
		if !neverForwarded(name) {
			w.Header()[name] = vals
		}
	}
	if ce := parseStatusJSON(w.Header().Get("Content-Type"), w.body.Bytes()); ce != nil {
		writeRESTError(w.ResponseWriter, ce)
		return
	}
	msg := strings.TrimSpace(w.body.String())
	if w.errStatus >= 500 || strings.Contains(msg, "\n") || len(msg) > 200 {
		msg = "" // never show a transcoder's internals
	}
	writeRESTBody(w.ResponseWriter, w.errStatus, restErrorBody{Code: httpStatusCode(w.errStatus), Message: msg})
}

// parseStatusJSON reads the google.rpc.Status the transcoder writes for a
// REST error back into a coded error.
func parseStatusJSON(contentType string, body []byte) *connect.Error {
	if !strings.HasPrefix(contentType, "application/json") || len(body) == 0 {
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

type restErrorMetaKey struct{}

// errorMetaInterceptor hands the metadata of a failed call to the REST
// layer: the transcoder renders a REST error from the status alone and drops
// its metadata, which carries what REST callers need too (Retry-After, an
// upstream's headers).
func errorMetaInterceptor() connect.Interceptor {
	return errorMeta{}
}

type errorMeta struct{}

func (errorMeta) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		keepErrorMeta(ctx, err)
		return res, err
	}
}

func (errorMeta) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (errorMeta) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		keepErrorMeta(ctx, err)
		return err
	}
}

func keepErrorMeta(ctx context.Context, err error) {
	if err == nil {
		return
	}
	holder, ok := ctx.Value(restErrorMetaKey{}).(*http.Header)
	if !ok {
		return
	}
	var ce *connect.Error
	if errors.As(err, &ce) && len(ce.Meta()) > 0 {
		*holder = ce.Meta().Clone()
	}
}
