package interceptors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// tokenBucketScript is one atomic token-bucket step. It uses the server's
// clock (TIME) so replicas with skewed clocks still share one budget, keeps
// the fractional token count as a string (Lua numbers returned to Redis are
// truncated to integers), and lets idle buckets expire once they would be
// full again. Returns {allowed (0|1), retry-after in microseconds}.
var tokenBucketScript = redis.NewScript(`
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000000)
end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, wait}
`)

const (
	redisOpTimeout = 250 * time.Millisecond
	// redisBackoff is how long the limiter stays on its local fallback after
	// Redis failed, so an outage costs one timeout per period, not per call.
	redisBackoff = 2 * time.Second
)

// RedisLimiter keeps token buckets in Redis so that every gateway replica
// draws from one budget. When Redis cannot be reached it falls back to a
// [LocalLimiter] (logging the change both ways) instead of failing calls.
type RedisLimiter struct {
	client    *redis.Client
	prefix    string
	fallback  *LocalLimiter
	logger    *slog.Logger
	downUntil atomic.Int64 // unix nanos; 0 when Redis is believed healthy
	degraded  atomic.Bool
}

// NewRedisLimiter connects to the Redis at url (redis:// or rediss://);
// keys are namespaced by prefix. Redis being down at start-up is not an
// error: the limiter starts on its local fallback.
func NewRedisLimiter(ctx context.Context, url, prefix string, logger *slog.Logger) (*RedisLimiter, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	opts.DialTimeout = time.Second
	opts.ReadTimeout = redisOpTimeout
	opts.WriteTimeout = redisOpTimeout
	opts.PoolTimeout = redisOpTimeout
	opts.MaxRetries = -1 // a rate-limit check is cheap to fall back from, not to retry
	opts.DialerRetries = 1
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &RedisLimiter{
		client:   redis.NewClient(opts),
		prefix:   prefix,
		fallback: NewLocalLimiter(nil),
		logger:   logger,
	}
	pingCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := r.client.Ping(pingCtx).Err(); err != nil {
		r.markDown(err)
	}
	return r, nil
}

// Close releases the Redis connections.
func (r *RedisLimiter) Close() error { return r.client.Close() }

// Allow implements [Limiter].
func (r *RedisLimiter) Allow(ctx context.Context, key string, limit Limit) (bool, time.Duration) {
	if limit.Unlimited() {
		return true, 0
	}
	limit = limit.normalized()
	if until := r.downUntil.Load(); until != 0 && time.Now().UnixNano() < until {
		return r.fallback.Allow(ctx, key, limit)
	}
	// The caller's cancellation must not count as an outage, and a slow
	// Redis must not hold calls: a short deadline of our own.
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisOpTimeout)
	defer cancel()
	res, err := tokenBucketScript.Run(opCtx, r.client, []string{r.prefix + key},
		strconv.FormatFloat(limit.Rate, 'g', -1, 64), limit.Burst).Int64Slice()
	if err == nil && len(res) != 2 {
		err = errors.New("unexpected script reply")
	}
	if err != nil {
		r.markDown(err)
		return r.fallback.Allow(ctx, key, limit)
	}
	if r.degraded.CompareAndSwap(true, false) {
		r.downUntil.Store(0)
		r.logger.Info("rate limiter: Redis reachable again; sharing the budget across replicas")
	}
	return res[0] == 1, time.Duration(res[1]) * time.Microsecond
}

func (r *RedisLimiter) markDown(err error) {
	r.downUntil.Store(time.Now().Add(redisBackoff).UnixNano())
	if r.degraded.CompareAndSwap(false, true) {
		r.logger.Error("rate limiter: Redis unreachable; using the local limiter (budgets are per replica until it recovers)",
			"error", err)
	}
}
