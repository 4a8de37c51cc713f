package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowgate/flowgate/internal/apierr"
)

// Outlier detection defaults. A backend that stops answering (a hung or
// stopped process, a black-holed network) keeps its connection open, so
// nothing fails: calls wait for their deadlines while more pile up. The
// gateway notices it by probing an upstream that has calls in flight but
// has finished none for stallAfter, and ejects it when the probe gets no
// answer.
const (
	defaultMaxInFlight = 1024
	stallAfter         = 2 * time.Second
	probeTimeout       = time.Second
	probeInterval      = 500 * time.Millisecond
)

// upstreamGuard fails calls to one upstream replica fast when it cannot
// take them: when it already has MaxInFlight unary calls, and while it is
// ejected for not answering. An ejected replica is probed until it answers
// again.
type upstreamGuard struct {
	name        string
	maxInFlight int64
	probe       func(context.Context) error
	logger      *slog.Logger

	inFlight     atomic.Int64
	lastDone     atomic.Int64 // unix nanoseconds of the last call that got an answer
	ejected      atomic.Bool
	ejectedSince atomic.Int64
	// ejectionsTotal counts the ejections of every replica of the upstream.
	ejectionsTotal *atomic.Int64
}

func newUpstreamGuard(name string, maxInFlight int, probe func(context.Context) error, logger *slog.Logger) *upstreamGuard {
	if maxInFlight <= 0 {
		maxInFlight = defaultMaxInFlight
	}
	g := &upstreamGuard{name: name, maxInFlight: int64(maxInFlight), probe: probe, logger: logger, ejectionsTotal: new(atomic.Int64)}
	g.lastDone.Store(time.Now().UnixNano())
	return g
}

// run watches the upstream until ctx ends.
func (g *upstreamGuard) run(ctx context.Context) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.watch(ctx)
		}
	}
}

// watch probes an ejected upstream, and one that looks stalled: calls in
// flight and none answered for stallAfter. Idle upstreams are not probed.
func (g *upstreamGuard) watch(ctx context.Context) {
	ejected := g.ejected.Load()
	stalled := g.inFlight.Load() > 0 && time.Since(time.Unix(0, g.lastDone.Load())) > stallAfter
	if !ejected && !stalled {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	err := g.probe(pctx)
	// Only a probe that ran out of time finds the upstream hung; one that
	// was refused finds it down, and calls to it fail fast by themselves.
	hung := err != nil && pctx.Err() != nil
	cancel()
	switch {
	case ctx.Err() != nil:
	case !hung && ejected:
		g.lastDone.Store(time.Now().UnixNano())
		g.ejected.Store(false)
		g.logger.Info("upstream answers again; calls resume", slog.String("upstream", g.name),
			slog.Duration("ejected_for", time.Since(time.Unix(0, g.ejectedSince.Load()))))
	case err == nil:
		// Alive, only slow: its calls are long ones.
		g.lastDone.Store(time.Now().UnixNano())
	case hung && !ejected:
		g.eject("no answer to a health probe while calls wait", err)
	}
}

func (g *upstreamGuard) eject(reason string, err error) {
	if g.ejected.Swap(true) {
		return
	}
	g.ejectedSince.Store(time.Now().UnixNano())
	g.ejectionsTotal.Add(1)
	g.logger.Warn("upstream ejected: calls fail fast until it answers a probe", slog.String("upstream", g.name),
		slog.String("reason", reason), slog.Any("error", err), slog.Int64("in_flight", g.inFlight.Load()))
}

// admit lets a unary call through, or says why not. A call admitted must
// be followed by done.
func (g *upstreamGuard) admit() error {
	if err := g.check(); err != nil {
		return err
	}
	if g.inFlight.Add(1) > g.maxInFlight {
		g.inFlight.Add(-1)
		return g.refuse(fmt.Errorf("%s has too many calls in flight; retry shortly", g.name))
	}
	return nil
}

// check fails a call fast while the upstream is ejected.
func (g *upstreamGuard) check() error {
	if g.ejected.Load() {
		return g.refuse(fmt.Errorf("%s is not answering; retry shortly", g.name))
	}
	return nil
}

// refuse is the error of a call the gateway did not send: Unavailable, with
// the standard hint that it may be retried in a second (google.rpc.RetryInfo,
// and Retry-After for HTTP callers). The call did not start, so any call,
// idempotent or not, may be retried.
func (g *upstreamGuard) refuse(err error) error {
	ce := apierr.UpstreamRefused(apierr.Public(err.Error()))
	if detail, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)}); derr == nil {
		ce.AddDetail(detail)
	}
	ce.Meta().Set("Retry-After", "1")
	return ce
}

// done records how an admitted call ended, at now.
func (g *upstreamGuard) done(ctx context.Context, err error, now time.Time) {
	g.inFlight.Add(-1)
	g.record(ctx, err, now)
}

// record notes answers, errors the upstream sent included, as signs of
// life. A call its caller gave up on, or that reached no upstream, tells
// nothing: refused connections need no ejection, they fail fast by
// themselves (and are redialled as calls come, see grpcCaller).
func (g *upstreamGuard) record(ctx context.Context, err error, now time.Time) {
	if ctx.Err() != nil || err != nil && noAnswer(err) {
		return
	}
	// Stalls are told in seconds: a sign of life is written at most once
	// a millisecond, so that calls ending together on several cores do not
	// each take the shared word for themselves.
	if n := now.UnixNano(); n-g.lastDone.Load() >= int64(time.Millisecond) {
		g.lastDone.Store(n)
	}
}

// noAnswer reports whether err means the call never got an answer from the
// upstream (a refused, reset or lost connection), as opposed to an error the
// upstream sent.
func noAnswer(err error) bool {
	var we *wireError
	if errors.As(err, &we) {
		return false
	}
	var ce *connect.Error
	if errors.As(err, &ce) && connect.IsWireError(ce) {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeInternal, connect.CodeUnknown:
		return true
	}
	return false
}

// grpcProbe asks a gRPC upstream for its health over the connection calls
// use. Any answer, an error included, proves the upstream alive: a backend
// need not implement the health service.
func grpcProbe(up *grpcUpstream, service string) func(context.Context) error {
	req, _ := proto.Marshal(&healthpb.HealthCheckRequest{Service: service})
	caller := grpcCaller{grpcUpstream: up, procedure: healthpb.Health_Check_FullMethodName}
	return func(ctx context.Context) error {
		// Through the caller, the probe takes the connection the calls
		// take.
		_, err := caller.unary(ctx, connect.NewRequest(&frame{data: req}))
		if err == nil {
			return nil
		}
		if we := (*wireError)(nil); errors.As(err, &we) {
			return nil
		}
		return err
	}
}

// connectProbe is grpcProbe for Connect and gRPC-Web upstreams.
func connectProbe(client *grpchealth.Client, service string) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := client.Check(ctx, &grpchealth.CheckRequest{Service: service})
		var ce *connect.Error
		if err == nil || errors.As(err, &ce) && connect.IsWireError(ce) {
			return nil
		}
		return err
	}
}
