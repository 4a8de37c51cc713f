package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Bounds of an http_request node's retry parameters.
const (
	maxRetryAttempts   = 10
	defaultRetryTries  = 3
	defaultBackoff     = 500 * time.Millisecond
	defaultMaxBackoff  = 30 * time.Second
	maxBackoffAllowed  = 5 * time.Minute
	retryParamsAllowed = "max_attempts, backoff_ms, max_backoff_ms"
)

// retryPolicy repeats a request that failed in a way that may pass: a
// transport error, a 5xx or a 429. The wait starts at backoff and doubles;
// a Retry-After the server sends replaces it. No wait exceeds maxBackoff (a
// server asking for longer ends the retries) or outlasts the run.
type retryPolicy struct {
	attempts   int
	backoff    time.Duration
	maxBackoff time.Duration
}

func compileRetry(v any, field string) (*retryPolicy, *fieldError) {
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fieldErrorf(field, "must be an object with %s", retryParamsAllowed)
	}
	p := &retryPolicy{attempts: defaultRetryTries, backoff: defaultBackoff, maxBackoff: defaultMaxBackoff}
	for _, key := range sortedKeys(obj) {
		var fe *fieldError
		switch key {
		case "max_attempts":
			var n int64
			n, fe = wholeInRange(obj[key], field+"."+key, 1, maxRetryAttempts)
			p.attempts = int(n)
		case "backoff_ms":
			p.backoff, fe = millisInRange(obj[key], field+"."+key, 1, maxBackoffAllowed)
		case "max_backoff_ms":
			p.maxBackoff, fe = millisInRange(obj[key], field+"."+key, 1, maxBackoffAllowed)
		default:
			fe = fieldErrorf(field+"."+key, "unknown parameter; retry takes %s", retryParamsAllowed)
		}
		if fe != nil {
			return nil, fe
		}
	}
	if p.backoff > p.maxBackoff {
		return nil, fieldErrorf(field+".backoff_ms", "is %d, more than max_backoff_ms (%d)", p.backoff.Milliseconds(), p.maxBackoff.Milliseconds())
	}
	return p, nil
}

func wholeInRange(v any, field string, lo, hi int64) (int64, *fieldError) {
	n, err := intParam(v)
	if err != nil || n < lo || n > hi {
		return 0, fieldErrorf(field, "must be a whole number from %d to %d", lo, hi)
	}
	return n, nil
}

func millisInRange(v any, field string, lo int64, hi time.Duration) (time.Duration, *fieldError) {
	n, fe := wholeInRange(v, field, lo, hi.Milliseconds())
	return time.Duration(n) * time.Millisecond, fe
}

// attempt is what one try of a request came to.
type attempt struct {
	out        map[string]any // nil when no response came
	err        error
	transient  bool          // another try may succeed
	retryAfter time.Duration // what the server asked for, 0 if nothing
}

// wait says how long to wait before try number done+1, or why not to try
// again.
func (p *retryPolicy) wait(ctx context.Context, done int, a attempt) (time.Duration, string) {
	if !a.transient || done >= p.attempts {
		return 0, ""
	}
	d := p.backoff << min(done-1, 30)
	if d <= 0 || d > p.maxBackoff {
		d = p.maxBackoff
	}
	if a.retryAfter > 0 {
		if a.retryAfter > p.maxBackoff {
			return 0, fmt.Sprintf("the server asked to retry after %s, more than max_backoff_ms", a.retryAfter)
		}
		d = a.retryAfter
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= d {
		return 0, fmt.Sprintf("the run's deadline comes before the next attempt in %s", d)
	}
	return d, ""
}

// retryable reports whether a response's status may pass on another try,
// and the wait its Retry-After asks for.
func retryable(resp *http.Response) (bool, time.Duration) {
	if resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode < 500 {
		return false, 0
	}
	return true, retryAfter(resp.Header.Get("Retry-After"))
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Duration(min(max(secs, 0), 1<<30)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// transientError reports whether a request that got no response may pass
// on another try. A refused destination or a name that does not exist will
// not.
func transientError(err error) bool {
	if errors.Is(err, errBlockedAddress) {
		return false
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return !dnsErr.IsNotFound
	}
	return true
}

// sleep waits d unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
