package server

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/sse"
)

// Label values are bounded: procedures come from the service descriptors
// the gateway serves (anything else is "unknown"), protocols from the five
// the gateway speaks, codes from connect's seventeen.
const unknownLabel = "unknown"

// numCodes is "ok" and connect's sixteen error codes.
const numCodes = int(connect.CodeUnauthenticated) + 1

var (
	callerProtocols = [...]string{"rest", sse.Protocol, connect.ProtocolConnect, connect.ProtocolGRPC, connect.ProtocolGRPCWeb, unknownLabel}
	latencies       = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	messageSize     = prometheus.ExponentialBuckets(64, 4, 10) // 64 B to 16 MiB
)

// codeLabel is the code label of err: "ok", or connect's name of its code.
func codeLabel(code connect.Code) string {
	if code == 0 {
		return "ok"
	}
	return code.String()
}

// codeIndex is err's code as an index of per-code series, 0 for success.
func codeIndex(err error) int {
	if err == nil {
		return 0
	}
	if c := int(connect.CodeOf(err)); c < numCodes {
		return c
	}
	return int(connect.CodeUnknown)
}

// metrics are the gateway's Prometheus metrics, on a registry of its own so
// that gateways in one process (tests) do not collide.
type metrics struct {
	registry *prometheus.Registry
	rpc      rpcVecs
	// procedures are the series of every procedure the gateway serves,
	// fixed at start-up; unknown holds whatever else gets through.
	procedures map[string]*procedureSeries
	unknown    *procedureSeries
	sseOpen    prometheus.Gauge
	refusals   *prometheus.CounterVec
	authFails  *prometheus.CounterVec
	upstream   upstreamVecs
}

type rpcVecs struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight *prometheus.GaugeVec
	reqSize  *prometheus.HistogramVec
	resSize  *prometheus.HistogramVec
}

func newMetrics(procedures []string) *metrics {
	m := &metrics{registry: prometheus.NewRegistry(), procedures: make(map[string]*procedureSeries, len(procedures))}
	byProcedure := []string{"procedure", "protocol"}
	withCode := []string{"procedure", "protocol", "code"}
	m.rpc = rpcVecs{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_rpc_requests_total", Help: "Calls finished, by procedure, caller protocol and code."}, withCode),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowgate_rpc_duration_seconds", Help: "Time from a call reaching the RPC layer to its end (a stream's whole life), by procedure, caller protocol and code.", Buckets: latencies}, withCode),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "flowgate_rpc_in_flight", Help: "Calls in progress, by procedure and caller protocol."}, byProcedure),
		reqSize:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowgate_rpc_request_message_bytes", Help: "Size of request messages in binary protobuf, by procedure and caller protocol.", Buckets: messageSize}, byProcedure),
		resSize:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowgate_rpc_response_message_bytes", Help: "Size of response messages in binary protobuf, by procedure and caller protocol.", Buckets: messageSize}, byProcedure),
	}
	m.sseOpen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "flowgate_sse_streams_open", Help: "Server-Sent-Events streams open."})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_rate_limit_refusals_total", Help: "Calls refused by a rate limit (rate_limit), the cap on open streams per caller (stream_limit), and connections refused by the cap per client address (conn_limit)."}, []string{"reason"})
	m.authFails = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_auth_failures_total", Help: "Calls refused by authentication (unauthenticated) or authorization (permission_denied)."}, []string{"reason"})
	m.upstream = newUpstreamVecs()
	m.registry.MustRegister(m.rpc.requests, m.rpc.duration, m.rpc.inFlight, m.rpc.reqSize, m.rpc.resSize,
		m.sseOpen, m.refusals, m.authFails,
		m.upstream.calls, m.upstream.duration, m.upstream.refused, m.upstream.retries, m.upstream.retriesDenied,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, p := range procedures {
		m.procedures[p] = &procedureSeries{name: p}
	}
	m.unknown = &procedureSeries{name: unknownLabel}
	return m
}

// handler serves the exposition format.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{Registry: m.registry})
}

// procedureSeries holds one procedure's series per caller protocol,
// resolved on first use so that a call does not look labels up.
type procedureSeries struct {
	name      string
	protocols [len(callerProtocols)]atomic.Pointer[callSeries]
}

// callSeries are the series of one procedure and caller protocol; the
// per-code ones are resolved on first use too.
type callSeries struct {
	vecs     *rpcVecs
	labels   [2]string
	inFlight prometheus.Gauge
	reqSize  prometheus.Observer
	resSize  prometheus.Observer
	codes    [numCodes]atomic.Pointer[codeSeries]
}

type codeSeries struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func (m *metrics) series(procedure, protocol string) *callSeries {
	ps := m.procedures[procedure]
	if ps == nil {
		ps = m.unknown
	}
	i := protocolIndex(protocol)
	if s := ps.protocols[i].Load(); s != nil {
		return s
	}
	labels := [2]string{ps.name, callerProtocols[i]}
	s := &callSeries{
		vecs:     &m.rpc,
		labels:   labels,
		inFlight: m.rpc.inFlight.WithLabelValues(labels[:]...),
		reqSize:  m.rpc.reqSize.WithLabelValues(labels[:]...),
		resSize:  m.rpc.resSize.WithLabelValues(labels[:]...),
	}
	// Two first calls may race; either's series are the same children.
	if !ps.protocols[i].CompareAndSwap(nil, s) {
		return ps.protocols[i].Load()
	}
	return s
}

func protocolIndex(protocol string) int {
	for i, p := range callerProtocols {
		if p == protocol {
			return i
		}
	}
	return len(callerProtocols) - 1
}

// done counts a finished call.
func (s *callSeries) done(err error, elapsed time.Duration) {
	i := codeIndex(err)
	cs := s.codes[i].Load()
	if cs == nil {
		code := codeLabel(connect.Code(i)) //nolint:gosec // below numCodes
		cs = &codeSeries{
			requests: s.vecs.requests.WithLabelValues(s.labels[0], s.labels[1], code),
			duration: s.vecs.duration.WithLabelValues(s.labels[0], s.labels[1], code),
		}
		s.codes[i].Store(cs)
	}
	cs.requests.Inc()
	cs.duration.Observe(elapsed.Seconds())
}

// interceptor measures every call of the chain it is in, whatever the
// caller's protocol: the grpc-go path runs the same chain.
func (m *metrics) interceptor() connect.Interceptor { return rpcMetrics{m} }

type rpcMetrics struct{ m *metrics }

func (i rpcMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		s := i.m.series(req.Spec().Procedure, interceptors.CallerProtocol(ctx, req.Peer()))
		s.inFlight.Inc()
		observeFrame(s.reqSize, req.Any())
		start := time.Now()
		res, err := next(ctx, req)
		elapsed := time.Since(start)
		s.inFlight.Dec()
		if err == nil && res != nil {
			observeFrame(s.resSize, res.Any())
		}
		s.done(err, elapsed)
		return res, err
	}
}

func (rpcMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i rpcMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		spec := conn.Spec()
		protocol := interceptors.CallerProtocol(ctx, conn.Peer())
		s := i.m.series(spec.Procedure, protocol)
		if cc, ok := conn.(countingConn); ok && spec.StreamType == connect.StreamTypeUnary {
			return i.m.fastUnary(ctx, s, cc, next)
		}
		return i.m.stream(ctx, s, protocol == sse.Protocol, conn, next)
	}
}

// countingConn is the connection of a unary call that counts the bytes of
// its messages itself, so that measuring it costs no wrapper: the grpc-go
// path's and the REST fast path's.
type countingConn interface {
	connect.StreamingHandlerConn
	// messageBytes returns the request's size, whether there was one,
	// and the response's size.
	messageBytes() (received int, hasRequest bool, sent int)
}

// fastUnary measures a unary call on a countingConn.
func (m *metrics) fastUnary(ctx context.Context, s *callSeries, conn countingConn, next connect.StreamingHandlerFunc) error {
	s.inFlight.Inc()
	start := time.Now()
	err := next(ctx, conn)
	elapsed := time.Since(start)
	s.inFlight.Dec()
	received, hasRequest, sent := conn.messageBytes()
	if hasRequest {
		s.reqSize.Observe(float64(received))
	}
	if err == nil {
		s.resSize.Observe(float64(sent))
	}
	s.done(err, elapsed)
	return err
}

// stream measures a stream, observing each message as it passes.
//
//go:noinline
func (m *metrics) stream(ctx context.Context, s *callSeries, isSSE bool, conn connect.StreamingHandlerConn, next connect.StreamingHandlerFunc) error {
	s.inFlight.Inc()
	if isSSE {
		m.sseOpen.Inc()
	}
	start := time.Now()
	err := next(ctx, &measuredConn{StreamingHandlerConn: conn, series: s})
	elapsed := time.Since(start)
	s.inFlight.Dec()
	if isSSE {
		m.sseOpen.Dec()
	}
	s.done(err, elapsed)
	return err
}

// measuredConn observes the size of each message of a stream.
type measuredConn struct {
	connect.StreamingHandlerConn
	series *callSeries
}

// Unwrap gives handlers that need the underlying connection (reflection on
// the grpc-go path) a way to it.
func (c *measuredConn) Unwrap() connect.StreamingHandlerConn { return c.StreamingHandlerConn }

func (c *measuredConn) Receive(msg any) error {
	err := c.StreamingHandlerConn.Receive(msg)
	if err == nil {
		observeFrame(c.series.reqSize, msg)
	}
	return err
}

func (c *measuredConn) Send(msg any) error {
	err := c.StreamingHandlerConn.Send(msg)
	if err == nil {
		observeFrame(c.series.resSize, msg)
	}
	return err
}

// observeFrame observes the size of a forwarded message; other messages
// (health, reflection) would have to be encoded again to be measured.
func observeFrame(o prometheus.Observer, msg any) {
	if f, ok := msg.(*frame); ok {
		o.Observe(float64(len(f.data)))
	}
}
