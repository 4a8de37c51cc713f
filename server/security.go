package server

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"github.com/rs/cors"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	optionsv1 "github.com/flowgate/flowgate/gen/go/flowgate/options/v1"
	"github.com/flowgate/flowgate/interceptors"
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
	// flag -api-keys, in a form parsed by interceptors.ParseAPIKeys:
	// "sha256hex:subject:tenant:scope1 scope2;sha256hex:..." or a JSON array.
	APIKeys string
	// DefaultTenant is the tenant of credentials that name none: single-
	// tenant mode. Empty refuses such credentials (401), so that tenant-less
	// callers never share one unnamed tenant. With authentication off it
	// is the tenant of every call (default "default").
	// Env FLOWGATE_DEFAULT_TENANT, flag -default-tenant.
	DefaultTenant string
	// BackendKey is the key shared with the backends, with which the
	// gateway signs each forwarded call's identity (at least 32 bytes).
	// flowgate-backends need it; empty sends calls without a token, which
	// they refuse.
	// Env FLOWGATE_BACKEND_KEY, flag -backend-key.
	BackendKey string
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
	// BodyReadTimeout bounds reading a request's whole body (default 30s;
	// negative: none). Bodies that are open-ended by design (client- and
	// bidirectional-streaming calls) are exempt. Env
	// FLOWGATE_BODY_READ_TIMEOUT, flag -body-read-timeout.
	BodyReadTimeout time.Duration
	// WriteTimeout ends a call when one write of its response makes no
	// progress for this long, a caller that stopped reading (default 30s;
	// negative: none). Idle streams are not affected: only writes under way
	// are timed. Env FLOWGATE_WRITE_TIMEOUT, flag -write-timeout.
	WriteTimeout time.Duration
	// MaxConnsPerIP caps the open connections of one client address (an
	// IPv6 /64), trusted proxies excepted (default 1024; negative: no cap).
	// Connections over it get 429 RATE_LIMITED (an SSE stream: an error
	// event EventSource retries; HTTP/2: a GOAWAY), and are closed. An
	// HTTP/1.1 caller needs a connection per call in flight: the default
	// lets one caller at 2,000 calls a second wait half a second on a slow
	// upstream before it is refused.
	// Env FLOWGATE_MAX_CONNS_PER_IP, flag -max-conns-per-ip.
	MaxConnsPerIP int
	// MaxStreamsPerCaller caps the server streams (SSE included) one caller
	// holds open at once: one authenticated subject, or one client address
	// without credentials (default 32; negative: no cap). Env
	// FLOWGATE_MAX_STREAMS_PER_CALLER, flag -max-streams-per-caller.
	MaxStreamsPerCaller int
	// MaxConcurrentStreams caps HTTP/2 streams per connection (default 250).
	// Env FLOWGATE_MAX_CONCURRENT_STREAMS, flag -max-concurrent-streams.
	MaxConcurrentStreams uint32
	// SSECookie is the cookie the SSE routes read a bearer token from, or
	// an API key when its value is not a JWT (default "flowgate_token").
	// Env FLOWGATE_SSE_COOKIE, flag -sse-cookie.
	SSECookie string
	// SSEQueryTokenMaxTTL is the longest remaining lifetime accepted for a
	// token passed in the access_token query parameter (default 5m).
	// Env FLOWGATE_SSE_QUERY_TOKEN_MAX_TTL, flag -sse-query-token-max-ttl.
	SSEQueryTokenMaxTTL time.Duration
}

// Defaults of the security settings.
const (
	defaultMaxBodyBytes         = 4 << 20
	defaultMaxHeaderBytes       = 64 << 10
	defaultReadHeaderTimeout    = 10 * time.Second
	defaultIdleTimeout          = 2 * time.Minute
	defaultMaxConcurrentStreams = 250
	defaultBodyReadTimeout      = 30 * time.Second
	defaultWriteTimeout         = 30 * time.Second
	defaultMaxConnsPerIP        = 1024
	defaultMaxStreamsPerCaller  = 32
	defaultSSECookie            = "flowgate_token"
	defaultSSEQueryTokenMaxTTL  = 5 * time.Minute
	defaultRedisKeyPrefix       = "flowgate:rl:"
)

// Procedures the gateway serves itself, outside the three services.
const (
	healthCheckProcedure        = "/grpc.health.v1.Health/Check"
	healthWatchProcedure        = "/grpc.health.v1.Health/Watch"
	reflectionV1Procedure       = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	reflectionV1AlphaProcedure  = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
	securityStartupLoadDeadline = 15 * time.Second
)

// security is the gateway's one security policy, applied identically to
// every protocol: HTTP middleware outside the transcoder (CORS, limits,
// client address, removal of client-sent identity headers) and Connect
// interceptors inside it (authentication, authorization, rate limits).
type security struct {
	cfg          SecurityConfig
	logger       *slog.Logger
	auth         *interceptors.Authenticator
	rules        map[string]interceptors.AccessRule
	proxies      *interceptors.ProxyTrust
	redis        *interceptors.RedisLimiter
	chain        []connect.Interceptor
	cors         *cors.Cors
	corsWildcard bool
	errs         errorWriter
	// authFailed counts credentials refused at the HTTP level, which the
	// interceptors that count the others never see; nil counts nothing.
	authFailed func()
	// connRefused counts connections refused by the per-address cap;
	// refuseStream answers such a connection's SSE request (nil: none).
	connRefused  func()
	refuseStream streamRefusal
	needClientIP bool
	// openEnded are the procedures whose request bodies are not timed.
	openEnded map[string]bool
}

// newSecurity validates cfg and builds the policy for services, whose
// methods' (flowgate.options.v1.access) options give the access rules.
func newSecurity(cfg SecurityConfig, services []protoreflect.ServiceDescriptor, logger *slog.Logger) (*security, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &security{cfg: cfg, logger: logger, errs: newErrorWriter()}
	s.rules = accessRules(services, cfg.PublicReflection)
	s.openEnded = openEndedProcedures(services)
	if s.proxies, err = interceptors.ParseTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	if s.cors, s.corsWildcard, err = newCORS(cfg.AllowedOrigins, logger); err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	if err := s.buildAuth(); err != nil {
		return nil, err
	}
	if err := s.buildChain(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (cfg SecurityConfig) withDefaults() (SecurityConfig, error) {
	switch {
	case cfg.MaxBodyBytes < 0:
		return cfg, fmt.Errorf("security: max body bytes %d is negative", cfg.MaxBodyBytes)
	case cfg.MaxHeaderBytes < 0:
		return cfg, fmt.Errorf("security: max header bytes %d is negative", cfg.MaxHeaderBytes)
	case cfg.RateLimitIP < 0 || cfg.RateLimitSubject < 0 || cfg.RateLimitIPBurst < 0 || cfg.RateLimitSubjectBurst < 0:
		return cfg, fmt.Errorf("security: rate limits must not be negative")
	}
	setDefault(&cfg.MaxBodyBytes, defaultMaxBodyBytes)
	setDefault(&cfg.MaxHeaderBytes, defaultMaxHeaderBytes)
	setDefault(&cfg.ReadHeaderTimeout, defaultReadHeaderTimeout)
	setDefault(&cfg.IdleTimeout, defaultIdleTimeout)
	setDefault(&cfg.MaxConcurrentStreams, defaultMaxConcurrentStreams)
	setDefault(&cfg.BodyReadTimeout, defaultBodyReadTimeout)
	setDefault(&cfg.WriteTimeout, defaultWriteTimeout)
	setDefault(&cfg.MaxConnsPerIP, defaultMaxConnsPerIP)
	setDefault(&cfg.MaxStreamsPerCaller, defaultMaxStreamsPerCaller)
	setDefault(&cfg.SSECookie, defaultSSECookie)
	setDefault(&cfg.SSEQueryTokenMaxTTL, defaultSSEQueryTokenMaxTTL)
	setDefault(&cfg.RedisKeyPrefix, defaultRedisKeyPrefix)
	if len(cfg.AllowedOrigins) == 0 {
		cfg.AllowedOrigins = []string{"http://localhost:3000", "http://localhost:8080"}
	}
	return cfg, nil
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// accessRules reads every method's access option. Health is always public;
// reflection when configured; anything else without a rule needs
// credentials (the interceptor fails closed).
func accessRules(services []protoreflect.ServiceDescriptor, publicReflection bool) map[string]interceptors.AccessRule {
	rules := map[string]interceptors.AccessRule{
		healthCheckProcedure: {Public: true},
		healthWatchProcedure: {Public: true},
	}
	if publicReflection {
		rules[reflectionV1Procedure] = interceptors.AccessRule{Public: true}
		rules[reflectionV1AlphaProcedure] = interceptors.AccessRule{Public: true}
	}
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			m := methods.Get(i)
			procedure := "/" + string(svc.FullName()) + "/" + string(m.Name())
			rule, _ := proto.GetExtension(m.Options(), optionsv1.E_Access).(*optionsv1.AccessRule)
			rules[procedure] = interceptors.AccessRule{Scope: rule.GetScope(), Public: rule.GetPublic()}
		}
	}
	return rules
}

func (s *security) buildAuth() error {
	cfg := s.cfg
	keys, err := interceptors.ParseAPIKeys(cfg.APIKeys)
	if err != nil {
		return fmt.Errorf("security: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), securityStartupLoadDeadline)
	defer cancel()
	s.auth, err = interceptors.NewAuthenticator(ctx, interceptors.AuthConfig{
		JWT: interceptors.JWTConfig{
			Secret:         []byte(cfg.SecretKey),
			PublicKeyFiles: cfg.PublicKeyFiles,
			JWKS:           cfg.JWKSURL,
			JWKSRefresh:    cfg.JWKSRefresh,
			Issuer:         cfg.Issuer,
			Audience:       cfg.Audience,
			Leeway:         cfg.Leeway,
			SubjectClaim:   cfg.SubjectClaim,
			ScopeClaim:     cfg.ScopeClaim,
			TenantClaim:    cfg.TenantClaim,
			Logger:         s.logger,
		},
		APIKeys:       keys,
		DefaultTenant: cfg.DefaultTenant,
	})
	if err != nil {
		return fmt.Errorf("security: %w", err)
	}
	if !s.auth.Enabled() {
		s.logger.Warn("AUTHENTICATION IS DISABLED: no SECRET_KEY, public key, JWKS or API key is configured, " +
			"so every caller can call every RPC; configure a credential source before exposing this gateway")
		return nil
	}
	s.logger.Info("authentication enabled",
		slog.Bool("hs256", cfg.SecretKey != ""),
		slog.Int("public_key_files", len(cfg.PublicKeyFiles)),
		slog.Bool("jwks", cfg.JWKSURL != ""),
		slog.Int("api_keys", len(keys)),
		slog.String("default_tenant", cfg.DefaultTenant),
		slog.Bool("public_reflection", cfg.PublicReflection))
	if n := s.auth.TenantlessAPIKeys(); n > 0 && cfg.DefaultTenant == "" {
		s.logger.Warn("API keys without a tenant are refused; give them a tenant or set a default tenant (single-tenant mode)",
			slog.Int("api_keys", n))
	}
	return nil
}

// buildChain assembles the interceptors in their order: the per-IP limit
// first (so that guessing credentials is limited too), then
// authentication and authorization, then the per-subject limit, then the
// cap on open streams (which needs the identity).
func (s *security) buildChain() error {
	cfg := s.cfg
	overrides, err := interceptors.ParseRateOverrides(cfg.RateLimitOverrides)
	if err != nil {
		return fmt.Errorf("security: %w", err)
	}
	limits := interceptors.RateLimitConfig{
		PerIP:      interceptors.Limit{Rate: cfg.RateLimitIP, Burst: cfg.RateLimitIPBurst},
		PerSubject: interceptors.Limit{Rate: cfg.RateLimitSubject, Burst: cfg.RateLimitSubjectBurst},
		Overrides:  overrides,
	}
	limited := !limits.PerIP.Unlimited() || !limits.PerSubject.Unlimited() || len(overrides) > 0
	if limited {
		if limits.Limiter, err = s.newLimiter(); err != nil {
			return err
		}
	}
	if limited && (!limits.PerIP.Unlimited() || len(overrides) > 0) {
		byIP, err := interceptors.NewRateLimitInterceptor(limits, interceptors.ByClientIP)
		if err != nil {
			return fmt.Errorf("security: %w", err)
		}
		s.chain = append(s.chain, byIP)
		s.needClientIP = true
	}
	if s.auth.Enabled() {
		authz, err := interceptors.NewAuthInterceptor(s.auth, s.rules)
		if err != nil {
			return fmt.Errorf("security: %w", err)
		}
		s.chain = append(s.chain, authz)
		if limited && (!limits.PerSubject.Unlimited() || len(overrides) > 0) {
			bySubject, err := interceptors.NewRateLimitInterceptor(limits, interceptors.BySubject)
			if err != nil {
				return fmt.Errorf("security: %w", err)
			}
			s.chain = append(s.chain, bySubject)
		}
	}
	if cfg.MaxStreamsPerCaller > 0 {
		// Without credentials a caller is its address: the peer's, unless
		// a trusted proxy says otherwise.
		s.chain = append(s.chain, interceptors.NewStreamLimit(cfg.MaxStreamsPerCaller))
		s.needClientIP = s.needClientIP || len(cfg.TrustedProxies) > 0
	}
	return nil
}

func (s *security) newLimiter() (interceptors.Limiter, error) {
	if s.cfg.RedisURL == "" {
		return interceptors.NewLocalLimiter(nil), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), securityStartupLoadDeadline)
	defer cancel()
	r, err := interceptors.NewRedisLimiter(ctx, s.cfg.RedisURL, s.cfg.RedisKeyPrefix, s.logger)
	if err != nil {
		return nil, fmt.Errorf("security: %w", err)
	}
	s.redis = r
	return r, nil
}

// interceptors returns the Connect interceptors enforcing authentication,
// authorization, rate limits and the stream cap, in the order they must
// run. It is empty when none of them is configured, so an open gateway
// without a stream cap pays nothing; the cap alone costs unary calls
// nothing either.
func (s *security) interceptors() []connect.Interceptor { return s.chain }

// transcodeBufferFactor sizes the transcoder's per-message buffer from the
// body limit. Requests are held to the body limit before the transcoder
// (compressed ones inflated there, see inflateRequest); the transcoder's
// buffer bounds responses, which may legitimately be larger.
const transcodeBufferFactor = 4

// handlerOptions bound what a handler reads of one message, a second line
// behind the inflate guard.
func (s *security) handlerOptions() []connect.HandlerOption {
	return []connect.HandlerOption{connect.WithReadMaxBytes(int(s.cfg.MaxBodyBytes))}
}

// transcoderOption bounds the transcoder's message buffers, which is where
// requests of the protocols it converts are decompressed.
func (s *security) transcoderOption() vanguard.TranscoderOption {
	return vanguard.WithDefaultServiceOptions(vanguard.WithMaxMessageBufferBytes(uint32(s.maxMessageBytes())))
}

// maxMessageBytes is the largest message the gateway holds: the
// transcoder's buffer, and what the gRPC upstream clients accept, so that a
// response too large for one protocol is too large for all.
func (s *security) maxMessageBytes() int {
	return int(min(s.cfg.MaxBodyBytes*transcodeBufferFactor, math.MaxUint32, math.MaxInt32))
}

// configureServer applies the header size limit, timeouts and the HTTP/2
// stream cap to srv. No WriteTimeout: streams are long.
func (s *security) configureServer(srv *http.Server) {
	srv.MaxHeaderBytes = s.cfg.MaxHeaderBytes
	srv.ReadHeaderTimeout = s.cfg.ReadHeaderTimeout
	srv.IdleTimeout = s.cfg.IdleTimeout
	if srv.HTTP2 == nil {
		srv.HTTP2 = &http.HTTP2Config{}
	}
	srv.HTTP2.MaxConcurrentStreams = int(s.cfg.MaxConcurrentStreams)
}

// Close releases the shared rate-limit store's connections, if any.
func (s *security) Close() error {
	if s.redis != nil {
		return s.redis.Close()
	}
	return nil
}
