package main

import (
	"github.com/flowgate/flowgate/cmd/internal/flagenv"
	"github.com/flowgate/flowgate/server"
)

// securityFlags binds the security settings; server.SecurityConfig documents
// what each one does.
func securityFlags(set *flagenv.Set, c *server.SecurityConfig) {
	set.String(&c.SecretKey, "secret-key", "SECRET_KEY", "", "HS256 secret for bearer tokens, at least 32 bytes; enables authentication")
	set.List(&c.PublicKeyFiles, "jwt-public-key", "FLOWGATE_JWT_PUBLIC_KEYS", nil, "PEM public key files for RS256/ES256/EdDSA tokens (key id: file base name); enables authentication")
	set.String(&c.JWKSURL, "jwks-url", "FLOWGATE_JWKS_URL", "", "JWKS document (http(s) URL or file) for token keys; enables authentication")
	set.Duration(&c.JWKSRefresh, "jwks-refresh", "FLOWGATE_JWKS_REFRESH", 0, "JWKS reload interval (default 5m)")
	set.String(&c.Issuer, "jwt-issuer", "FLOWGATE_JWT_ISSUER", "", "required iss claim")
	set.String(&c.Audience, "jwt-audience", "FLOWGATE_JWT_AUDIENCE", "", "required aud claim")
	set.Duration(&c.Leeway, "jwt-leeway", "FLOWGATE_JWT_LEEWAY", 0, "clock skew tolerated on exp/nbf/iat (default 30s)")
	set.String(&c.SubjectClaim, "jwt-subject-claim", "FLOWGATE_JWT_SUBJECT_CLAIM", "", "claim holding the subject (default sub)")
	set.String(&c.ScopeClaim, "jwt-scope-claim", "FLOWGATE_JWT_SCOPE_CLAIM", "", "claim holding space-separated scopes (default scope)")
	set.String(&c.TenantClaim, "jwt-tenant-claim", "FLOWGATE_JWT_TENANT_CLAIM", "", "claim holding the tenant (default tenant)")
	set.String(&c.APIKeys, "api-keys", "FLOWGATE_API_KEYS", "", "X-API-Key credentials as sha256hex:subject:tenant:scope1 scope2;... (or a JSON array); enables authentication")
	set.String(&c.DefaultTenant, "default-tenant", "FLOWGATE_DEFAULT_TENANT", "", "single-tenant mode: tenant of credentials that name none (default: refuse them with 401)")
	set.String(&c.BackendKey, "backend-key", "FLOWGATE_BACKEND_KEY", "", "key shared with flowgate-backends to sign each call's identity, at least 32 bytes; needed with remote flowgate-backends (default: a key of this process for the embedded ones; none, so no token, for remote ones)")
	set.Bool(&c.PublicReflection, "public-reflection", "FLOWGATE_PUBLIC_REFLECTION", false, "serve gRPC reflection without credentials")
	set.Float(&c.RateLimitIP, "rate-limit-ip", "FLOWGATE_RATE_LIMIT_IP", 0, "requests per second per client IP (0: unlimited)")
	set.Int(&c.RateLimitIPBurst, "rate-limit-ip-burst", "FLOWGATE_RATE_LIMIT_IP_BURST", 0, "burst per client IP (default twice the rate)")
	set.Float(&c.RateLimitSubject, "rate-limit-subject", "FLOWGATE_RATE_LIMIT_SUBJECT", 0, "requests per second per authenticated subject (0: unlimited)")
	set.Int(&c.RateLimitSubjectBurst, "rate-limit-subject-burst", "FLOWGATE_RATE_LIMIT_SUBJECT_BURST", 0, "burst per subject (default twice the rate)")
	set.String(&c.RateLimitOverrides, "rate-limit-overrides", "FLOWGATE_RATE_LIMIT_OVERRIDES", "", "per-procedure limits: /pkg.Service/Method=rate[:burst],...")
	set.String(&c.RedisURL, "redis-url", "REDIS_URL", "", "Redis URL to share rate-limit budgets across replicas")
	set.String(&c.RedisKeyPrefix, "redis-prefix", "FLOWGATE_REDIS_PREFIX", "", "prefix of rate-limit keys in Redis (default flowgate:rl:)")
	set.List(&c.TrustedProxies, "trusted-proxies", "FLOWGATE_TRUSTED_PROXIES", nil, "CIDRs or IPs whose X-Forwarded-For is believed")
	set.List(&c.AllowedOrigins, "allowed-origins", "ALLOWED_ORIGINS", nil, "CORS origins (default http://localhost:3000,http://localhost:8080)")
	set.Int64(&c.MaxBodyBytes, "max-body-bytes", "FLOWGATE_MAX_BODY_BYTES", 4<<20, "largest request body accepted")
	set.Int(&c.MaxHeaderBytes, "max-header-bytes", "FLOWGATE_MAX_HEADER_BYTES", 0, "largest request header block accepted (default 64 KiB)")
	set.Duration(&c.ReadHeaderTimeout, "read-header-timeout", "FLOWGATE_READ_HEADER_TIMEOUT", 0, "time allowed to read request headers (default 10s)")
	set.Duration(&c.IdleTimeout, "idle-timeout", "FLOWGATE_IDLE_TIMEOUT", 0, "idle keep-alive connection timeout (default 120s)")
	set.Duration(&c.BodyReadTimeout, "body-read-timeout", "FLOWGATE_BODY_READ_TIMEOUT", 0, "time allowed to receive a whole request body; streaming uploads exempt (default 30s; negative: none)")
	set.Duration(&c.WriteTimeout, "write-timeout", "FLOWGATE_WRITE_TIMEOUT", 0, "a response write that makes no progress for this long ends the call; idle streams unaffected (default 30s; negative: none)")
	set.Int(&c.MaxConnsPerIP, "max-conns-per-ip", "FLOWGATE_MAX_CONNS_PER_IP", 0, "open connections per client address (IPv6: per /64), trusted proxies exempt (default 1024; negative: no cap); connections over it get 429 RATE_LIMITED (HTTP/2: a GOAWAY) and are closed")
	set.Int(&c.MaxStreamsPerCaller, "max-streams-per-caller", "FLOWGATE_MAX_STREAMS_PER_CALLER", 0, "open server streams (SSE included) per subject, or per address without credentials (default 32; negative: no cap)")
	set.Uint32(&c.MaxConcurrentStreams, "max-concurrent-streams", "FLOWGATE_MAX_CONCURRENT_STREAMS", 0, "HTTP/2 streams per connection (default 250)")
	set.String(&c.SSECookie, "sse-cookie", "FLOWGATE_SSE_COOKIE", "", "cookie SSE routes read a bearer token from, or an API key when its value is not a JWT (default flowgate_token)")
	set.Duration(&c.SSEQueryTokenMaxTTL, "sse-query-token-max-ttl", "FLOWGATE_SSE_QUERY_TOKEN_MAX_TTL", 0, "longest remaining lifetime of an access_token query token (default 5m)")
}
