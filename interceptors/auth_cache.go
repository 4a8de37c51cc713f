package interceptors

import (
	"hash/maphash"
	"sync"
	"time"
)

// Verifying a signature costs tens of microseconds (RS256, ES256), more
// than the whole forwarding path is allowed; a client sends the same token
// for many calls. Tokens that verified are therefore remembered, keyed by
// the whole token string, until the earlier of their exp and a short TTL
// (so a key withdrawn from the JWKS stops working soon after). Failures
// are never cached.
const (
	tokenCacheTTL        = time.Minute
	tokenCacheShardLimit = 1024
	tokenCacheShards     = 16
)

type tokenCache struct {
	seed   maphash.Seed
	shards [tokenCacheShards]tokenCacheShard
}

type tokenCacheShard struct {
	mu      sync.Mutex
	entries map[string]cachedIdentity
}

type cachedIdentity struct {
	id      Identity
	expires time.Time
}

func newTokenCache() *tokenCache {
	c := &tokenCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].entries = make(map[string]cachedIdentity)
	}
	return c
}

func (c *tokenCache) shard(token string) *tokenCacheShard {
	return &c.shards[maphash.String(c.seed, token)%tokenCacheShards]
}

func (c *tokenCache) get(token string, now time.Time) (Identity, bool) {
	sh := c.shard(token)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.entries[token]
	if !ok {
		return Identity{}, false
	}
	if !now.Before(e.expires) {
		delete(sh.entries, token)
		return Identity{}, false
	}
	return e.id, true
}

func (c *tokenCache) put(token string, id Identity, exp, now time.Time) {
	expires := now.Add(tokenCacheTTL)
	if exp.Before(expires) {
		expires = exp
	}
	if !now.Before(expires) {
		return
	}
	sh := c.shard(token)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.entries) >= tokenCacheShardLimit {
		for k, e := range sh.entries {
			if !now.Before(e.expires) {
				delete(sh.entries, k)
			}
		}
		// Still full of live entries: drop some (map order is random).
		for k := range sh.entries {
			if len(sh.entries) < tokenCacheShardLimit*3/4 {
				break
			}
			delete(sh.entries, k)
		}
	}
	sh.entries[token] = cachedIdentity{id: id, expires: expires}
}
