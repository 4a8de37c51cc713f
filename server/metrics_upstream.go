package server

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowgate/flowgate/interceptors"
)

// upstreamVecs are the per-upstream metrics the forwarders update; the
// in-flight count and ejections are read from the upstreams' guards when
// scraped, so calls pay nothing for them.
type upstreamVecs struct {
	calls         *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	refused       *prometheus.CounterVec
	retries       *prometheus.CounterVec
	retriesDenied *prometheus.CounterVec
}

func newUpstreamVecs() upstreamVecs {
	return upstreamVecs{
		calls:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_upstream_calls_total", Help: "Calls sent to an upstream (unary calls and streams), by the code the caller got."}, []string{"upstream", "code"}),
		duration:      prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "flowgate_upstream_call_duration_seconds", Help: "Time an upstream took to answer a unary call.", Buckets: latencies}, []string{"upstream"}),
		refused:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_upstream_refused_total", Help: "Calls failed fast without being sent: every replica of the upstream was ejected or had too many calls in flight."}, []string{"upstream"}),
		retries:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_upstream_retries_total", Help: "Calls sent again after a failed attempt."}, []string{"upstream"}),
		retriesDenied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flowgate_upstream_retries_denied_total", Help: "Retries not made because the upstream's retry budget was spent."}, []string{"upstream"}),
	}
}

// upstreamLabel is the upstream label of a service: "agent" for
// "workflow agent".
func upstreamLabel(name string) string { return strings.TrimPrefix(name, "workflow ") }

// upstreamStats are one upstream's series, shared by its forwarders.
type upstreamStats struct {
	vecs          *upstreamVecs
	name          string
	duration      prometheus.Observer
	refused       prometheus.Counter
	retries       prometheus.Counter
	retriesDenied prometheus.Counter
	codes         [numCodes]atomic.Pointer[prometheus.Counter]
}

// watchUpstream registers the series of one upstream and of its replicas'
// guards, summed: replica addresses may come and go with DNS, so they are
// not labels.
func (m *metrics) watchUpstream(name string, pool *replicaPool) *upstreamStats {
	label := upstreamLabel(name)
	labels := prometheus.Labels{"upstream": label}
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flowgate_upstream_in_flight", Help: "Unary calls in flight to an upstream.", ConstLabels: labels},
			func() float64 { return float64(pool.inFlight()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flowgate_upstream_ejections_total", Help: "Times an upstream was ejected for not answering.", ConstLabels: labels},
			func() float64 { return float64(pool.ejections.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flowgate_upstream_ejected", Help: "Replicas of an upstream ejected for not answering: calls pass them over.", ConstLabels: labels},
			func() float64 { return float64(pool.ejected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flowgate_upstream_replicas", Help: "Replicas an upstream's address lists or resolves to.", ConstLabels: labels},
			func() float64 { return float64(pool.size()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flowgate_upstream_own_client_calls_total", Help: "Unary calls to a gRPC upstream sent over the gateway's own HTTP/2 connections.", ConstLabels: labels},
			func() float64 { sent, _ := pool.ownClientCalls(); return float64(sent) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flowgate_upstream_grpc_go_calls_total", Help: "Unary calls to a gRPC upstream its own HTTP/2 client left to grpc-go's: no connection yet, a request over the upstream's windows, its stream limit reached, or a stream it refused.", ConstLabels: labels},
			func() float64 { _, left := pool.ownClientCalls(); return float64(left) }),
	)
	return &upstreamStats{
		vecs:          &m.upstream,
		name:          label,
		duration:      m.upstream.duration.WithLabelValues(label),
		refused:       m.upstream.refused.WithLabelValues(label),
		retries:       m.upstream.retries.WithLabelValues(label),
		retriesDenied: m.upstream.retriesDenied.WithLabelValues(label),
	}
}

// call counts a call that was sent, ended with err as the caller gets it.
func (s *upstreamStats) call(err error) {
	i := codeIndex(err)
	c := s.codes[i].Load()
	if c == nil {
		counter := s.vecs.calls.WithLabelValues(s.name, codeLabel(connect.Code(i))) //nolint:gosec // below numCodes
		c = &counter
		s.codes[i].Store(c)
	}
	(*c).Inc()
}

// unary counts a unary call and observes how long the upstream took.
func (s *upstreamStats) unary(err error, elapsed time.Duration) {
	s.call(err)
	s.duration.Observe(elapsed.Seconds())
}

// watchRefusals wraps the security interceptors so that the calls each
// refuses are counted by why. An interceptor refused a call when it
// returned an error without passing the call on; errors from further in
// pass through it marked, so that they are not counted.
func (m *metrics) watchRefusals(chain []connect.Interceptor) []connect.Interceptor {
	out := make([]connect.Interceptor, len(chain))
	for i, in := range chain {
		out[i] = refusalCounter{inner: in, m: m}
	}
	return out
}

type refusalCounter struct {
	inner connect.Interceptor
	m     *metrics
}

// passedOn marks an error that did not come from the wrapped interceptor.
type passedOn struct{ err error }

func (p *passedOn) Error() string { return p.err.Error() }

func (r refusalCounter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	wrapped := r.inner.WrapUnary(func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		if err != nil {
			return res, &passedOn{err}
		}
		return res, nil
	})
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := wrapped(ctx, req)
		return res, r.outcome(err)
	}
}

func (r refusalCounter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return r.inner.WrapStreamingClient(next)
}

func (r refusalCounter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	wrapped := r.inner.WrapStreamingHandler(func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := next(ctx, conn); err != nil {
			return &passedOn{err}
		}
		return nil
	})
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return r.outcome(wrapped(ctx, conn))
	}
}

// outcome unmarks an error passed on, and counts one the interceptor made.
func (r refusalCounter) outcome(err error) error {
	if err == nil {
		return nil
	}
	if p, ok := err.(*passedOn); ok { //nolint:errorlint // the mark is never wrapped
		return p.err
	}
	switch code := connect.CodeOf(err); {
	case code == connect.CodeUnauthenticated || code == connect.CodePermissionDenied:
		r.m.authFails.WithLabelValues(codeLabel(code)).Inc()
	case code == connect.CodeResourceExhausted:
		reason := "rate_limit"
		if _, ok := r.inner.(*interceptors.StreamLimit); ok {
			reason = "stream_limit"
		}
		r.m.refusals.WithLabelValues(reason).Inc()
	}
	return err
}
