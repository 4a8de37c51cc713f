package interceptors

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	defaultJWKSRefresh    = 5 * time.Minute
	defaultJWKSMinRefresh = 10 * time.Second
	jwksFetchTimeout      = 10 * time.Second
	maxJWKSBytes          = 1 << 20
)

// keySet holds the verification keys: fixed ones (the HMAC secret, PEM
// files) and those of a JWKS document. The JWKS is reloaded when older than
// refresh (in the background, serving the current keys meanwhile) and at
// most once per minRefresh when a token names a kid nobody knows, so a
// flood of made-up kids cannot turn the gateway into a JWKS DoS client.
type keySet struct {
	static     []verificationKey
	source     string // JWKS URL or file; empty: no JWKS
	refresh    time.Duration
	minRefresh time.Duration
	client     *http.Client
	logger     *slog.Logger
	now        func() time.Time

	jwks        atomic.Pointer[[]verificationKey]
	loadedAt    atomic.Int64 // unix nanos of the last successful load
	attemptedAt atomic.Int64 // unix nanos of the last attempt
	loadMu      sync.Mutex
}

// load fetches the JWKS and swaps it in. It returns the load error, if any;
// the previous keys stay in use on failure.
func (ks *keySet) load(ctx context.Context) error {
	ks.attemptedAt.Store(ks.now().UnixNano())
	data, err := ks.fetch(ctx)
	if err != nil {
		return err
	}
	keys, skipped, err := parseJWKS(data)
	if err != nil {
		return err
	}
	for _, e := range skipped {
		ks.logger.Warn("ignoring JWKS key", "source", redactURL(ks.source), "error", e)
	}
	ks.jwks.Store(&keys)
	ks.loadedAt.Store(ks.now().UnixNano())
	return nil
}

func (ks *keySet) fetch(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	if !strings.HasPrefix(ks.source, "http://") && !strings.HasPrefix(ks.source, "https://") {
		f, err := os.Open(strings.TrimPrefix(ks.source, "file://"))
		if err != nil {
			return nil, fmt.Errorf("open JWKS: %w", err)
		}
		defer f.Close()
		return readLimited(f)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.source, http.NoBody)
	if err != nil {
		return nil, fmt.Errorf("JWKS request: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch JWKS: HTTP status %d", resp.StatusCode)
	}
	return readLimited(resp.Body)
}

func readLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read JWKS: %w", err)
	}
	if len(data) > maxJWKSBytes {
		return nil, fmt.Errorf("JWKS larger than %d bytes", maxJWKSBytes)
	}
	return data, nil
}

// candidates returns the keys that may verify a token with this kid and alg.
func (ks *keySet) candidates(ctx context.Context, kid, alg string) []any {
	if ks.source != "" && ks.now().UnixNano()-ks.loadedAt.Load() > int64(ks.refresh) {
		ks.refreshInBackground()
	}
	found := ks.match(kid, alg)
	if len(found) == 0 && kid != "" && ks.source != "" && ks.mayRefreshNow() {
		ks.refreshNow(ctx)
		found = ks.match(kid, alg)
	}
	return found
}

func (ks *keySet) match(kid, alg string) []any {
	var out []any
	add := func(keys []verificationKey) {
		for _, k := range keys {
			if !k.allows(alg) {
				continue
			}
			// The single HMAC secret answers to any kid; public keys
			// only to their own when the token names one.
			if _, secret := k.key.([]byte); kid != "" && !secret && k.kid != kid {
				continue
			}
			out = append(out, k.key)
		}
	}
	add(ks.static)
	if p := ks.jwks.Load(); p != nil {
		add(*p)
	}
	return out
}

func (ks *keySet) mayRefreshNow() bool {
	return ks.now().UnixNano()-ks.attemptedAt.Load() >= int64(ks.minRefresh)
}

// refreshNow reloads synchronously for an unknown kid; concurrent callers
// wait for one load instead of each starting their own.
func (ks *keySet) refreshNow(ctx context.Context) {
	ks.loadMu.Lock()
	defer ks.loadMu.Unlock()
	if !ks.mayRefreshNow() {
		return // someone else just reloaded
	}
	if err := ks.load(ctx); err != nil {
		ks.logger.Warn("JWKS reload for unknown kid failed", "source", redactURL(ks.source), "error", err)
	}
}

func (ks *keySet) refreshInBackground() {
	if !ks.mayRefreshNow() || !ks.loadMu.TryLock() {
		return
	}
	go func() {
		defer ks.loadMu.Unlock()
		if err := ks.load(context.Background()); err != nil {
			ks.logger.Warn("periodic JWKS reload failed; keeping the previous keys",
				"source", redactURL(ks.source), "error", err)
		}
	}()
}

// redactURL keeps credentials and query strings of a JWKS URL out of logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable JWKS location)"
	}
	u.User = nil
	u.RawQuery = ""
	u.Fragment = ""
	return u.String()
}
