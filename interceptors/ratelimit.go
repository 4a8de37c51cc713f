package interceptors

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Limit is a token bucket: Rate tokens per second refill a bucket holding at
// most Burst; each call takes one. A zero Rate means unlimited.
type Limit struct {
	Rate  float64
	Burst int
}

// Unlimited reports whether the limit lets everything through.
func (l Limit) Unlimited() bool { return l.Rate <= 0 }

func (l Limit) normalized() Limit {
	if l.Burst <= 0 {
		l.Burst = max(1, int(math.Ceil(2*l.Rate)))
	}
	return l
}

// Limiter decides whether the bucket named key has a token. When it has
// not, retryAfter is how long until it will.
type Limiter interface {
	Allow(ctx context.Context, key string, limit Limit) (ok bool, retryAfter time.Duration)
}

// ParseRateOverrides decodes per-procedure limits written as
// "/pkg.Service/Method=rate[:burst],..." (rate in requests per second).
func ParseRateOverrides(s string) (map[string]Limit, error) {
	out := map[string]Limit{}
	for entry := range strings.SplitSeq(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		proc, spec, ok := strings.Cut(entry, "=")
		proc = strings.TrimSpace(proc)
		if !ok || !strings.HasPrefix(proc, "/") || strings.Count(proc, "/") != 2 {
			return nil, fmt.Errorf("rate override %q: want /pkg.Service/Method=rate[:burst]", entry)
		}
		rateStr, burstStr, hasBurst := strings.Cut(strings.TrimSpace(spec), ":")
		rate, err := strconv.ParseFloat(rateStr, 64)
		if err != nil || rate < 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
			return nil, fmt.Errorf("rate override %q: bad rate %q", entry, rateStr)
		}
		l := Limit{Rate: rate}
		if hasBurst {
			if l.Burst, err = strconv.Atoi(burstStr); err != nil || l.Burst < 1 {
				return nil, fmt.Errorf("rate override %q: bad burst %q", entry, burstStr)
			}
		}
		out[proc] = l
	}
	return out, nil
}

// LocalLimiter keeps token buckets in this process's memory, sharded to
// keep lock contention low; idle buckets are swept as they refill.
type LocalLimiter struct {
	now    func() time.Time
	seed   maphash.Seed
	shards [32]limiterShard
}

type limiterShard struct {
	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	full   time.Time // when the bucket will be full again; idle after that
}

const sweepEvery = time.Minute

// NewLocalLimiter returns an in-memory [Limiter]; now is the clock (nil:
// time.Now).
func NewLocalLimiter(now func() time.Time) *LocalLimiter {
	if now == nil {
		now = time.Now
	}
	l := &LocalLimiter{now: now, seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].buckets = map[string]*bucket{}
	}
	return l
}

// Allow implements [Limiter].
func (l *LocalLimiter) Allow(_ context.Context, key string, limit Limit) (bool, time.Duration) {
	return l.allow([]byte(key), limit)
}

// allow is Allow for a key in bytes, which the interceptors build without
// allocating: a string is made of it only for a new bucket.
func (l *LocalLimiter) allow(key []byte, limit Limit) (bool, time.Duration) {
	if limit.Unlimited() {
		return true, 0
	}
	limit = limit.normalized()
	now := l.now()
	sh := &l.shards[maphash.Bytes(l.seed, key)%uint64(len(l.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if now.Sub(sh.lastSweep) > sweepEvery {
		sh.sweep(now)
	}
	b, ok := sh.buckets[string(key)]
	if !ok {
		b = &bucket{tokens: float64(limit.Burst), last: now}
		sh.buckets[string(key)] = b
	}
	if elapsed := now.Sub(b.last).Seconds(); elapsed > 0 {
		b.tokens = math.Min(float64(limit.Burst), b.tokens+elapsed*limit.Rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		b.full = now.Add(time.Duration((float64(limit.Burst) - b.tokens) / limit.Rate * float64(time.Second)))
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / limit.Rate * float64(time.Second))
}

func (sh *limiterShard) sweep(now time.Time) {
	sh.lastSweep = now
	for k, b := range sh.buckets {
		if now.After(b.full) {
			delete(sh.buckets, k)
		}
	}
}

// RateLimitConfig configures a [RateLimitInterceptor].
type RateLimitConfig struct {
	Limiter Limiter
	// PerIP and PerSubject are the default limits of each dimension.
	PerIP      Limit
	PerSubject Limit
	// Overrides replace both defaults for one procedure; that procedure then
	// has buckets of its own.
	Overrides map[string]Limit
}

// RateLimitKey selects what a [RateLimitInterceptor] counts calls by.
type RateLimitKey int

const (
	// ByClientIP counts per caller address; it runs before authentication
	// so that credential guessing is limited too.
	ByClientIP RateLimitKey = iota
	// BySubject counts per authenticated subject; it runs after
	// authentication and lets anonymous calls through.
	BySubject
)

// RateLimitInterceptor refuses calls over their bucket's budget with
// [connect.CodeResourceExhausted], a Retry-After header (whole seconds) and
// a google.rpc.RetryInfo detail.
type RateLimitInterceptor struct {
	cfg RateLimitConfig
	by  RateLimitKey
}

var _ connect.Interceptor = (*RateLimitInterceptor)(nil)

// NewRateLimitInterceptor returns the interceptor counting calls by key.
func NewRateLimitInterceptor(cfg RateLimitConfig, by RateLimitKey) (*RateLimitInterceptor, error) {
	if cfg.Limiter == nil {
		return nil, errors.New("rate limit interceptor: nil limiter")
	}
	return &RateLimitInterceptor{cfg: cfg, by: by}, nil
}

func (i *RateLimitInterceptor) check(ctx context.Context, procedure, peerAddr string) error {
	// The key is built on the stack: a local limiter takes it as bytes,
	// and only another limiter gets a string of it.
	var buf [96]byte
	key := buf[:0]
	limit := i.cfg.PerIP
	switch i.by {
	case ByClientIP:
		ip, ok := ClientIPFromContext(ctx)
		if !ok {
			ip = ParseRemoteAddr(peerAddr)
		}
		key = append(key, "ip:"...)
		if ip.IsValid() {
			key = ip.AppendTo(key)
		} else {
			key = append(key, ip.String()...) // what AppendTo leaves out
		}
	case BySubject:
		id, ok := IdentityFromContext(ctx)
		if !ok {
			return nil
		}
		key = append(append(key, "sub:"...), id.Subject...)
		limit = i.cfg.PerSubject
	}
	if o, ok := i.cfg.Overrides[procedure]; ok {
		limit = o
		key = append(append(key, '|'), procedure...)
	}
	if limit.Unlimited() {
		return nil
	}
	var ok bool
	var retry time.Duration
	if local, isLocal := i.cfg.Limiter.(*LocalLimiter); isLocal {
		ok, retry = local.allow(key, limit)
	} else {
		ok, retry = i.cfg.Limiter.Allow(ctx, string(key), limit)
	}
	if ok {
		return nil
	}
	return rateLimited(retry)
}

func rateLimited(retry time.Duration) error {
	secs := max(1, int64(math.Ceil(retry.Seconds())))
	err := connect.NewError(connect.CodeResourceExhausted,
		fmt.Errorf("rate limit exceeded; retry in %d s", secs))
	err.Meta().Set("Retry-After", strconv.FormatInt(secs, 10))
	if d, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// RetryAfter returns the Retry-After value a rate-limit error carries, so
// HTTP error shaping can copy it onto the response.
func RetryAfter(err error) (string, bool) {
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
		return "", false
	}
	v := ce.Meta().Get("Retry-After")
	return v, v != ""
}

// WrapUnary implements [connect.Interceptor].
func (i *RateLimitInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		if err := i.check(ctx, req.Spec().Procedure, req.Peer().Addr); err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (i *RateLimitInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (i *RateLimitInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if err := i.check(ctx, conn.Spec().Procedure, conn.Peer().Addr); err != nil {
			return err
		}
		return next(ctx, conn)
	}
}
