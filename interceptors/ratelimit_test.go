package interceptors

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration) { c.ns.Add(int64(d)) }

func TestLocalLimiterBucket(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := NewLocalLimiter(clock.now)
	limit := Limit{Rate: 2, Burst: 3}
	for i := range 3 {
		if ok, _ := l.Allow(t.Context(), "k", limit); !ok {
			t.Fatalf("call %d within burst refused", i)
		}
	}
	ok, retry := l.Allow(t.Context(), "k", limit)
	if ok || retry != 500*time.Millisecond {
		t.Fatalf("over burst: ok=%v retry=%v, want refused with 500ms", ok, retry)
	}
	if ok, _ := l.Allow(t.Context(), "other", limit); !ok {
		t.Error("a different key shares the bucket")
	}
	clock.add(500 * time.Millisecond)
	if ok, _ := l.Allow(t.Context(), "k", limit); !ok {
		t.Error("token not refilled after 1/rate")
	}
	if ok, _ := l.Allow(t.Context(), "k", limit); ok {
		t.Error("refilled more than one token")
	}
	clock.add(time.Hour)
	for i := range 3 {
		if ok, _ := l.Allow(t.Context(), "k", limit); !ok {
			t.Fatalf("refill beyond burst: call %d refused", i)
		}
	}
	if ok, _ := l.Allow(t.Context(), "k", limit); ok {
		t.Error("bucket grew beyond its burst")
	}
	if ok, _ := l.Allow(t.Context(), "k", Limit{}); !ok {
		t.Error("zero limit must be unlimited")
	}
}

func TestLocalLimiterSweepsIdleBuckets(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	l := NewLocalLimiter(clock.now)
	for i := range 1000 {
		l.Allow(t.Context(), fmt.Sprint("ip:", i), Limit{Rate: 10, Burst: 10})
	}
	clock.add(2 * sweepEvery)
	// Sweeps happen shard by shard as calls arrive: touch fresh keys until
	// every shard has swept.
	swept := func() bool {
		for i := range l.shards {
			l.shards[i].mu.Lock()
			last := l.shards[i].lastSweep
			l.shards[i].mu.Unlock()
			if !last.Equal(clock.now()) {
				return false
			}
		}
		return true
	}
	for i := 0; !swept(); i++ {
		l.Allow(t.Context(), fmt.Sprint("fresh:", i), Limit{Rate: 10, Burst: 10})
	}
	for i := range l.shards {
		for k := range l.shards[i].buckets {
			if strings.HasPrefix(k, "ip:") {
				t.Fatalf("idle bucket %s survived the sweep", k)
			}
		}
	}
}

func TestParseRateOverrides(t *testing.T) {
	t.Parallel()
	got, err := ParseRateOverrides(" /a.v1.S/M=5:10, /a.v1.S/N=0.5 ,")
	if err != nil {
		t.Fatal(err)
	}
	if got["/a.v1.S/M"] != (Limit{Rate: 5, Burst: 10}) || got["/a.v1.S/N"] != (Limit{Rate: 0.5}) || len(got) != 2 {
		t.Errorf("overrides = %v", got)
	}
	for _, bad := range []string{"M=5", "/a.v1.S/M", "/a.v1.S/M=x", "/a.v1.S/M=5:0", "/a.v1.S/M=-1", "/a.v1.S/M=NaN", "/a/b/c=1"} {
		if _, err := ParseRateOverrides(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRateLimitInterceptor(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	cfg := RateLimitConfig{
		Limiter:    NewLocalLimiter(clock.now),
		PerIP:      Limit{Rate: 1, Burst: 2},
		PerSubject: Limit{Rate: 1, Burst: 1},
		Overrides:  map[string]Limit{"/t.v1.S/Public": {Rate: 1, Burst: 5}},
	}
	byIP, _ := NewRateLimitInterceptor(cfg, ByClientIP)
	bySub, _ := NewRateLimitInterceptor(cfg, BySubject)
	authz, _ := NewAuthInterceptor(newTestAuth(t), testRules)
	rec, url := startAuthServer(t, byIP, authz, bySub)

	// Per IP: two anonymous calls pass the limiter (and fail auth), the
	// third is refused before authentication.
	for i := range 2 {
		if err := call(t, url, "/t.v1.S/Read", nil); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	err := call(t, url, "/t.v1.S/Read", nil)
	assertRateLimited(t, err, "1")
	// The override gives the public procedure its own, larger bucket.
	for i := range 5 {
		if err := call(t, url, "/t.v1.S/Public", nil); err != nil {
			t.Fatalf("public call %d: %v", i, err)
		}
	}
	assertRateLimited(t, call(t, url, "/t.v1.S/Public", nil), "1")
	if rec.count() != 5 {
		t.Errorf("handler calls = %d, want 5", rec.count())
	}

	// Per subject, after the IP bucket refills.
	clock.add(10 * time.Second)
	token := mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{
		"sub": "carol", "tenant": "t1", "scope": "workflows:read", "exp": time.Now().Add(time.Minute).Unix(),
	})
	h := http.Header{"Authorization": {"Bearer " + token}}
	if err := call(t, url, "/t.v1.S/Read", h); err != nil {
		t.Fatal(err)
	}
	assertRateLimited(t, call(t, url, "/t.v1.S/Read", h), "1")
}

func assertRateLimited(t *testing.T, err error, retryAfter string) {
	t.Helper()
	ce, ok := err.(*connect.Error)
	if !ok || ce.Code() != connect.CodeResourceExhausted {
		t.Fatalf("err = %v, want resource exhausted", err)
	}
	if got := ce.Meta().Get("Retry-After"); got != retryAfter {
		t.Errorf("Retry-After = %q, want %q", got, retryAfter)
	}
	found := false
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ri, ok := v.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().AsDuration() > 0 {
				found = true
			}
		}
	}
	if !found {
		t.Error("no RetryInfo detail")
	}
	if v, ok := RetryAfter(err); !ok || v != retryAfter {
		t.Errorf("RetryAfter = %q, %v", v, ok)
	}
}

func TestRateLimitByIPUsesContextAddress(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	lim := NewLocalLimiter(clock.now)
	ic, _ := NewRateLimitInterceptor(RateLimitConfig{Limiter: lim, PerIP: Limit{Rate: 1, Burst: 1}}, ByClientIP)
	ok := func(ctx context.Context, ip string) error {
		return ic.check(WithClientIP(ctx, netip.MustParseAddr(ip)), "/p", "127.0.0.1:1")
	}
	if err := ok(t.Context(), "203.0.113.7"); err != nil {
		t.Fatal(err)
	}
	if err := ok(t.Context(), "203.0.113.8"); err != nil {
		t.Error("a different client shares the bucket")
	}
	if err := ok(t.Context(), "203.0.113.7"); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("second call from the same client: %v", err)
	}
}

// redisURL returns the test Redis, skipping when none is configured.
func redisURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("FLOWGATE_TEST_REDIS_URL")
	if url == "" {
		t.Skip("FLOWGATE_TEST_REDIS_URL is not set")
	}
	return url
}

func TestRedisLimiterSharedAcrossInstances(t *testing.T) {
	t.Parallel()
	url := redisURL(t)
	prefix := fmt.Sprintf("flowgate-test:%s:%d:", t.Name(), time.Now().UnixNano())
	a, err := NewRedisLimiter(t.Context(), url, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := NewRedisLimiter(t.Context(), url, prefix, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	limit := Limit{Rate: 0.1, Burst: 4}
	allowed := 0
	var retry time.Duration
	for i := range 10 {
		l := a
		if i%2 == 1 {
			l = b
		}
		ok, r := l.Allow(t.Context(), "ip:198.51.100.1", limit)
		if ok {
			allowed++
		} else {
			retry = r
		}
	}
	if allowed != 4 {
		t.Errorf("two instances allowed %d calls together, want the shared burst of 4", allowed)
	}
	if retry <= 0 || retry > 10*time.Second {
		t.Errorf("retry after = %v", retry)
	}
	if a.degraded.Load() || b.degraded.Load() {
		t.Error("limiter fell back although Redis is up")
	}
	t.Cleanup(func() { a.client.Del(context.Background(), prefix+"ip:198.51.100.1") })
}

func TestRedisLimiterFallsBackWhenUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	l, err := NewRedisLimiter(t.Context(), "redis://"+addr+"/0", "x:", logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	limit := Limit{Rate: 1, Burst: 2}
	var got []bool
	for range 3 {
		ok, _ := l.Allow(t.Context(), "k", limit)
		got = append(got, ok)
	}
	if fmt.Sprint(got) != "[true true false]" {
		t.Errorf("fallback decisions = %v, want the local bucket's [true true false]", got)
	}
	if n := strings.Count(logs.String(), "Redis unreachable"); n != 1 {
		t.Errorf("logged the outage %d times, want once:\n%s", n, logs.String())
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
