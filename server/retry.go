package server

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Retry defaults.
const (
	defaultRetryAttempts = 3
	defaultRetryBudget   = 0.2
	// retryFloor is the retries the budget allows per window whatever the
	// traffic, so that a quiet gateway still retries its few calls.
	retryFloor = 10
	// budgetBucket and budgetBuckets make the budget's window: the calls
	// and retries of the last ten seconds.
	budgetBucket  = time.Second
	budgetBuckets = 10
	// retryBackoff is the first retry's delay, doubled for each further
	// one up to retryBackoffMax; each delay is jittered down by up to half.
	retryBackoff    = 25 * time.Millisecond
	retryBackoffMax = 250 * time.Millisecond
)

// retryBudget caps an upstream's retries at a share of its recent calls
// (plus a small floor), so that a fleet that is down is not sent every
// call several times over. Counting a call is one atomic add; the window
// slides a second at a time (see replicaPool.run).
type retryBudget struct {
	ratio   float64
	bucket  atomic.Int64
	calls   [budgetBuckets]atomic.Int64
	retries [budgetBuckets]atomic.Int64
}

// call counts a call sent.
func (b *retryBudget) call() { b.calls[b.bucket.Load()%budgetBuckets].Add(1) }

// withdraw takes a retry from the budget, or says there is none left.
func (b *retryBudget) withdraw() bool {
	var calls, retries int64
	for i := range budgetBuckets {
		calls += b.calls[i].Load()
		retries += b.retries[i].Load()
	}
	if float64(retries) >= retryFloor+b.ratio*float64(calls) {
		return false
	}
	b.retries[b.bucket.Load()%budgetBuckets].Add(1)
	return true
}

// rotate starts a new bucket, forgetting the oldest.
func (b *retryBudget) rotate() {
	next := b.bucket.Load() + 1
	b.calls[next%budgetBuckets].Store(0)
	b.retries[next%budgetBuckets].Store(0)
	b.bucket.Store(next)
}

// idempotent reports whether a method is marked safe to call again
// (idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT in its proto).
func idempotent(method protoreflect.MethodDescriptor) bool {
	opts, ok := method.Options().(*descriptorpb.MethodOptions)
	return ok && opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN
}

// notSent reports whether a failed call certainly never reached the
// upstream: the connection to it could not be made.
func notSent(err error) bool {
	if connect.CodeOf(err) != connect.CodeUnavailable {
		return false
	}
	if we := (*wireError)(nil); errors.As(err, &we) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	// grpc-go fails calls on a connection it could not open with the
	// dialling error as text.
	msg := err.Error()
	return strings.Contains(msg, "while dialing") || strings.Contains(msg, "connection refused")
}

// retryable reports whether a failed attempt may be made again: when the
// upstream certainly did not get it, or, for idempotent methods, when it
// failed in transport or the upstream said it is unavailable. Errors the
// upstream sent otherwise are its answer.
func (f *forwarder) retryable(ctx context.Context, err error, attempt int) bool {
	if attempt >= f.attempts || ctx.Err() != nil {
		return false
	}
	if !notSent(err) {
		if !f.idempotent {
			return false
		}
		code := connect.CodeOf(err)
		upstreamCanceled := code == connect.CodeCanceled // the caller is still there
		if code != connect.CodeUnavailable && !upstreamCanceled && !noAnswer(err) {
			return false
		}
	}
	if !f.pool.budget.withdraw() {
		f.stats.retriesDenied.Inc()
		return false
	}
	f.stats.retries.Inc()
	return true
}

// waitRetry waits the backoff before attempt+1, and reports false when the caller's
// deadline would pass first or the caller went away.
func waitRetry(ctx context.Context, attempt int) bool {
	d := min(retryBackoff<<(attempt-1), retryBackoffMax)
	d -= rand.N(d / 2) //nolint:gosec // jitter
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
