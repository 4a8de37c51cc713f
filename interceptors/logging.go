package interceptors

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
)

// AccessLog writes one structured line per call: procedure, protocol, code,
// duration, request id and peer. Its [AccessLog.Interceptor] logs every call
// that reaches a Connect handler, whatever an inner interceptor decided; its
// [AccessLog.Middleware] logs the requests that never got that far
// (unknown routes, malformed bodies, rejections at the HTTP layer), so that
// each request is logged exactly once.
type AccessLog struct {
	logger *slog.Logger
	json   *jsonHandler // set when the lines are encoded here, not by slog
}

// NewAccessLog returns an access log writing to logger (nil discards).
func NewAccessLog(logger *slog.Logger) *AccessLog {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &AccessLog{logger: logger, json: directJSON(logger)}
}

// accessRecord links the HTTP-level and RPC-level halves of one request.
type accessRecord struct {
	protocol string
	logged   atomic.Bool
}

type accessKey struct{}

// httpCall is the middleware's state of one request, in one allocation:
// the context that carries its record and the writer that sees its status.
type httpCall struct {
	ctx valueContext[accessKey, accessRecord]
	sw  statusWriter
}

// Middleware logs requests that no interceptor logged. protocol names the
// caller's protocol (rest, sse, connect, grpc, grpcweb), which the RPC level
// cannot see once the transcoder has translated the call.
func (a *AccessLog) Middleware(protocol func(*http.Request) string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		call := &httpCall{sw: statusWriter{ResponseWriter: w}}
		call.ctx = valueContext[accessKey, accessRecord]{Context: r.Context(), value: accessRecord{protocol: protocol(r)}}
		rec, sw := &call.ctx.value, &call.sw
		next.ServeHTTP(sw, r.WithContext(&call.ctx))
		if rec.logged.Load() || sw.hijacked {
			return
		}
		status := sw.status
		if status == 0 {
			status = http.StatusOK
		}
		level := slog.LevelInfo
		if status >= 500 {
			level = slog.LevelWarn
		}
		ctx := r.Context()
		json, ok := a.enabledJSON(ctx, level)
		if !ok {
			return
		}
		if json != nil {
			line, now := json.line()
			*line = appendHTTPLine(*line, now, level, r.Method, r.URL.Path, rec.protocol, status, now.Sub(start), r.Header.Get("X-Request-Id"), r.RemoteAddr)
			json.write(line)
			return
		}
		a.logger.LogAttrs(ctx, level, "http",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.String("protocol", rec.protocol),
			slog.Int("status", status),
			slog.Duration("duration", time.Since(start)),
			slog.String("request_id", r.Header.Get("X-Request-Id")),
			slog.String("peer", r.RemoteAddr),
		)
	})
}

// Interceptor logs every RPC. Put it first, so that it also sees calls
// that later interceptors reject.
func (a *AccessLog) Interceptor() connect.Interceptor {
	return &accessInterceptor{log: a}
}

type accessInterceptor struct {
	log *AccessLog
}

func (i *accessInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		res, err := next(ctx, req)
		i.log.write(ctx, req.Spec().Procedure, req.Peer(), req.Header(), start, err)
		return res, err
	}
}

func (i *accessInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i *accessInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		i.log.writeStream(ctx, conn, start, err)
		return err
	}
}

// writeStream logs a stream. It is apart from the interceptor, whose frame
// stays on the stack of every open stream while this one's does not.
//
//go:noinline
func (a *AccessLog) writeStream(ctx context.Context, conn connect.StreamingHandlerConn, start time.Time, err error) {
	a.write(ctx, conn.Spec().Procedure, conn.Peer(), conn.RequestHeader(), start, err)
}

func (a *AccessLog) write(ctx context.Context, procedure string, peer connect.Peer, header http.Header, start time.Time, err error) {
	rec, _ := ctx.Value(accessKey{}).(*accessRecord)
	if rec != nil && rec.logged.Swap(true) {
		return // an in-process call made on behalf of an already logged request
	}
	code := "ok"
	level := slog.LevelInfo
	var errMsg string
	var hasErr bool
	if err != nil {
		// What connect.CodeOf does, with AsType rather than As, whose
		// pointer argument would put the error on the heap.
		c := connect.CodeUnknown
		if ce, ok := errors.AsType[*connect.Error](err); ok {
			c, errMsg, hasErr = ce.Code(), ce.Message(), true
		}
		code = c.String()
		if serverFault(c) {
			level = slog.LevelWarn
		}
	}
	json, ok := a.enabledJSON(ctx, level)
	if !ok {
		return
	}
	if json != nil {
		line, now := json.line()
		*line = appendRPCLine(*line, now, level, procedure, callerProtocol(rec, peer), code, now.Sub(start), header.Get("X-Request-Id"), peer.Addr, hasErr, errMsg)
		json.write(line)
		return
	}
	attrs := []slog.Attr{
		slog.String("procedure", procedure),
		slog.String("protocol", callerProtocol(rec, peer)),
		slog.String("code", code),
		slog.Duration("duration", time.Since(start)),
		slog.String("request_id", header.Get("X-Request-Id")),
		slog.String("peer", peer.Addr),
	}
	if hasErr {
		attrs = append(attrs, slog.String("error", errMsg))
	}
	a.logger.LogAttrs(ctx, level, "rpc", attrs...)
}

// CallerProtocol is the protocol the caller spoke (rest, sse, connect,
// grpc, grpcweb): what [AccessLog.Middleware] saw at the HTTP level when
// the call came through it, else the protocol of the RPC itself.
func CallerProtocol(ctx context.Context, peer connect.Peer) string {
	rec, _ := ctx.Value(accessKey{}).(*accessRecord)
	return callerProtocol(rec, peer)
}

func callerProtocol(rec *accessRecord, peer connect.Peer) string {
	if rec != nil && rec.protocol != "" {
		return rec.protocol
	}
	return peer.Protocol
}

// serverFault reports whether a code means the gateway or a backend failed,
// as opposed to the caller.
func serverFault(c connect.Code) bool {
	switch c {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss,
		connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeUnimplemented:
		return true
	}
	return false
}

// statusWriter remembers the status of a response. It keeps the writer's
// other abilities reachable through Unwrap, so that streams still flush.
type statusWriter struct {
	http.ResponseWriter
	status   int
	hijacked bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Hijack hands the connection over, and the logging with it: the one
// handler that takes connections (the SSE bridge) serves them through the
// RPC interceptors, whose [AccessLog.Interceptor] logs the call when it
// ends, long after this middleware returns.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	w.hijacked = err == nil
	return conn, rw, err
}
