package interceptors

import (
	"context"
	"fmt"
	"sync"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// StreamLimit caps the server streams one caller holds open at once, so
// that no caller can pin an unbounded share of the gateway's goroutines,
// buffers and upstream streams. A caller is its authenticated subject
// (within its tenant), or its client address when it has no identity: put
// the interceptor after authentication. Unary, client- and
// bidirectional-streaming calls are not counted.
type StreamLimit struct {
	open *Tally[string]
}

// NewStreamLimit returns a limit of max open server streams per caller.
func NewStreamLimit(max int) *StreamLimit {
	return &StreamLimit{open: NewTally[string](max)}
}

// streamCaller names who a stream is counted against.
func streamCaller(ctx context.Context, peerAddr string) string {
	if id, ok := IdentityFromContext(ctx); ok {
		return "sub:" + id.Tenant + "/" + id.Subject
	}
	ip, ok := ClientIPFromContext(ctx)
	if !ok {
		ip = ParseRemoteAddr(peerAddr)
	}
	return "ip:" + ip.String()
}

// Tally counts what each key holds open, up to a maximum per key.
type Tally[K comparable] struct {
	max  int
	mu   sync.Mutex
	open map[K]int
}

// NewTally returns a tally allowing max open per key.
func NewTally[K comparable](max int) *Tally[K] {
	return &Tally[K]{max: max, open: map[K]int{}}
}

// Max is the most each key may hold.
func (t *Tally[K]) Max() int { return t.max }

// Acquire takes one place for key, if it has one left.
func (t *Tally[K]) Acquire(key K) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open[key] >= t.max {
		return false
	}
	t.open[key]++
	return true
}

// Release gives back one place Acquire took for key.
func (t *Tally[K]) Release(key K) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open[key]--; t.open[key] <= 0 {
		delete(t.open, key)
	}
}

// WrapUnary implements [connect.Interceptor].
func (l *StreamLimit) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

// WrapStreamingClient implements [connect.Interceptor].
func (l *StreamLimit) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (l *StreamLimit) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if conn.Spec().StreamType != connect.StreamTypeServer {
			return next(ctx, conn)
		}
		key := streamCaller(ctx, conn.Peer().Addr)
		if !l.open.Acquire(key) {
			return l.exceeded()
		}
		defer l.open.Release(key)
		return next(ctx, conn)
	}
}

// exceeded is a rate-limit error: the caller may retry once it has closed
// a stream.
func (l *StreamLimit) exceeded() error {
	err := connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("too many open streams for this caller (limit %d); close one first", l.open.Max()))
	if d, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: "STREAM_LIMIT", Domain: "flowgate"}); derr == nil {
		err.AddDetail(d)
	}
	return err
}
