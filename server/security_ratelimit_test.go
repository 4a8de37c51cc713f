package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// limitedCall makes one ExecuteWorkflow call over protocol proto ("rest" or
// one of secProtocols) with extra headers, returning nil on success, or the
// Retry-After value and an error describing the refusal.
func limitedCall(t *testing.T, url, proto, m string, extra http.Header) (retryAfter string, err error) {
	t.Helper()
	h := bearer(hsToken(t, nil))
	for k, v := range extra {
		h[k] = v
	}
	if proto == "rest" {
		res := doREST(t, http.MethodPost, url+"/api/v1/workflow/execute", strings.NewReader(executeJSON(m, false)), h)
		if res.status == http.StatusOK {
			return "", nil
		}
		if res.status != http.StatusTooManyRequests || res.code != "RATE_LIMITED" {
			t.Fatalf("REST: %d %s, want 429 RATE_LIMITED", res.status, res.code)
		}
		return res.header.Get("Retry-After"), errors.New("rate limited")
	}
	for _, p := range secProtocols {
		if p.name != proto {
			continue
		}
		req := connect.NewRequest(executeRequest(m, false))
		for k, v := range h {
			req.Header()[k] = v
		}
		_, err := enginev1connect.NewWorkflowEngineServiceClient(h2cClient(t), url, p.opts...).ExecuteWorkflow(t.Context(), req)
		var ce *connect.Error
		if err == nil {
			return "", nil
		}
		if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
			t.Fatalf("%s: err = %v, want resource exhausted", proto, err)
		}
		return ce.Meta().Get("Retry-After"), err
	}
	t.Fatalf("unknown protocol %q", proto)
	return "", nil
}

var limitProtocols = []string{"rest", "connect", "connect-json", "grpc", "grpcweb"}

// TestSpoofedForwardedForDoesNotEscapeTheLimit: without trusted proxies,
// a caller cycling X-Forwarded-For values still has one bucket.
func TestSpoofedForwardedForDoesNotEscapeTheLimit(t *testing.T) {
	t.Parallel()
	for _, proto := range limitProtocols {
		t.Run(proto, func(t *testing.T) {
			t.Parallel()
			f := newSecFixture(t, func(c *Config) {
				c.Security.RateLimitIP = 0.01
				c.Security.RateLimitIPBurst = 2
			})
			var refused []string
			for i := range 4 {
				m := marker("xff", proto, fmt.Sprint(i))
				retry, err := limitedCall(t, f.url, proto, m, http.Header{"X-Forwarded-For": {fmt.Sprintf("198.51.100.%d", i+1)}})
				if err != nil {
					refused = append(refused, m)
					if retry == "" || retry == "0" {
						t.Errorf("call %d refused without a Retry-After (%q)", i, retry)
					}
				}
			}
			if len(refused) != 2 {
				t.Fatalf("refused %d of 4 calls, want 2 (burst 2, spoofed X-Forwarded-For ignored)", len(refused))
			}
			for _, m := range refused {
				if len(f.rec.find(m)) != 0 {
					t.Errorf("the backend saw refused call %s", m)
				}
			}
		})
	}
}

// A browser's stream refused by a rate limit comes back when the limit
// says: a 200 stream whose last retry advice is the limit's Retry-After,
// and the RATE_LIMITED error for the page to read. On a 429 EventSource
// would stop for good, and the page could not tell why.
func TestRateLimitedSSEStreamRetries(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) {
		c.Security.RateLimitIP = 0.01
		c.Security.RateLimitIPBurst = 1
	})
	if _, err := limitedCall(t, f.url, "rest", marker("sse-limit", "first"), nil); err != nil {
		t.Fatal(err)
	}
	res := sseGet(t, http1Client(t), f.url+"/api/v1/chat/stream?session_id=s&user_message=hi", bearer(hsToken(t, nil)))
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	retries := regexp.MustCompile(`(?m)^retry: (\d+)$`).FindAllStringSubmatch(string(body), -1)
	if res.StatusCode != http.StatusOK || len(retries) == 0 || retries[len(retries)-1][1] != "100000" ||
		!strings.HasSuffix(string(body), "event: error\ndata: {\"error\":{\"code\":\"RATE_LIMITED\",\"message\":\"rate limit exceeded; retry in 100 s\",\"details\":{\"retry_after_seconds\":100}}}\n\n") {
		t.Errorf("got %d %q, want a 200 stream advising a retry in 100 s, ending with the RATE_LIMITED event", res.StatusCode, body)
	}
}

// TestTrustedProxyForwardedFor: behind a trusted proxy, each forwarded
// client has its own bucket, and a client cannot escape its own by
// prepending addresses.
func TestTrustedProxyForwardedFor(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) {
		c.Security.RateLimitIP = 0.01
		c.Security.RateLimitIPBurst = 1
		c.Security.TrustedProxies = []string{"127.0.0.1/32"}
	})
	for i := range 3 {
		if _, err := limitedCall(t, f.url, "rest", marker("proxy", fmt.Sprint(i)), http.Header{"X-Forwarded-For": {fmt.Sprintf("203.0.113.%d", i+1)}}); err != nil {
			t.Errorf("distinct client %d behind the proxy was limited", i)
		}
	}
	_, err := limitedCall(t, f.url, "grpc", marker("proxy", "again"), http.Header{"X-Forwarded-For": {"6.6.6.6, 203.0.113.1"}})
	if err == nil {
		t.Error("client escaped its bucket by prepending a forged hop")
	}
}

// TestRedisSharedLimitAcrossGateways runs two gateways on one Redis: they
// enforce one budget between them.
func TestRedisSharedLimitAcrossGateways(t *testing.T) {
	t.Parallel()
	redisURL := os.Getenv("FLOWGATE_TEST_REDIS_URL")
	if redisURL == "" {
		t.Skip("FLOWGATE_TEST_REDIS_URL is not set")
	}
	prefix := fmt.Sprintf("flowgate-test:%s:%d:", t.Name(), time.Now().UnixNano())
	shared := func(c *Config) {
		c.Security.RateLimitIP = 0.01
		c.Security.RateLimitIPBurst = 3
		c.Security.RedisURL = redisURL
		c.Security.RedisKeyPrefix = prefix
	}
	a := newSecFixture(t, shared)
	b := newSecFixture(t, shared)
	allowed := 0
	for i := range 8 {
		url, proto := a.url, limitProtocols[i%len(limitProtocols)]
		if i%2 == 1 {
			url = b.url
		}
		if _, err := limitedCall(t, url, proto, marker("redis", fmt.Sprint(i)), nil); err == nil {
			allowed++
		}
	}
	if allowed != 3 {
		t.Errorf("two gateways allowed %d calls together, want the shared burst of 3", allowed)
	}
	if a.gw.security.redis == nil || b.gw.security.redis == nil {
		t.Fatal("gateways are not using Redis")
	}
}
