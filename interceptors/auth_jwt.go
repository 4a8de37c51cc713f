package interceptors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
)

const (
	defaultLeeway = 30 * time.Second
	// minSecretBytes follows RFC 7518 §3.2: an HS256 key must be at least
	// as long as the hash output.
	minSecretBytes = 32
	// maxTokenBytes bounds the work done on a hostile Authorization header.
	maxTokenBytes = 16 << 10
)

// JWTConfig configures bearer token verification. At least one key source
// (Secret, PublicKeyFiles or JWKS) must be set.
type JWTConfig struct {
	// Secret verifies HS256 tokens (at least 32 bytes).
	Secret []byte
	// PublicKeyFiles are PEM files of RSA, ECDSA or Ed25519 public keys; the
	// kid of their keys is the file's base name without extension.
	PublicKeyFiles []string
	// JWKS is a JSON Web Key Set URL (http, https) or file path.
	JWKS string
	// JWKSRefresh is the reload interval of JWKS (default 5m).
	JWKSRefresh time.Duration
	// JWKSMinRefresh is the least time between two reloads caused by
	// unknown kids (default 10s).
	JWKSMinRefresh time.Duration
	// HTTPClient fetches JWKS URLs (default: a client with a 10s timeout).
	HTTPClient *http.Client
	// Issuer and Audience, when set, must match the iss and aud claims.
	Issuer   string
	Audience string
	// Leeway tolerated on exp, nbf and iat (default 30s; negative: none).
	Leeway time.Duration
	// Claim names (defaults "sub", "scope", "tenant").
	SubjectClaim string
	ScopeClaim   string
	TenantClaim  string
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Enabled reports whether any key source is configured.
func (c JWTConfig) Enabled() bool {
	return len(c.Secret) > 0 || len(c.PublicKeyFiles) > 0 || c.JWKS != ""
}

// JWTVerifier checks bearer tokens and turns their claims into an
// [Identity].
type JWTVerifier struct {
	keys                        *keySet
	cache                       *tokenCache
	parser                      *jwt.Parser
	subject, scope, tenantClaim string
}

// NewJWTVerifier validates cfg, loads the keys and returns a verifier. A
// JWKS file must load; a JWKS URL that cannot be reached at start-up is
// logged and retried when tokens arrive, so the gateway can start before
// its identity provider.
func NewJWTVerifier(ctx context.Context, cfg JWTConfig) (*JWTVerifier, error) {
	if !cfg.Enabled() {
		return nil, errors.New("jwt: no key source configured")
	}
	ks, err := newKeySet(cfg)
	if err != nil {
		return nil, err
	}
	if ks.source != "" {
		if err := ks.load(ctx); err != nil {
			if !strings.HasPrefix(ks.source, "http") {
				return nil, fmt.Errorf("jwt: %w", err)
			}
			ks.logger.Warn("JWKS not loaded at start-up; will retry on demand",
				"source", redactURL(ks.source), "error", err)
		}
	}
	leeway := cfg.Leeway
	switch {
	case leeway == 0:
		leeway = defaultLeeway
	case leeway < 0:
		leeway = 0
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(ks.allAlgs()),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(leeway),
		jwt.WithTimeFunc(ks.now),
		jwt.WithStrictDecoding(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	return &JWTVerifier{
		keys:        ks,
		cache:       newTokenCache(),
		parser:      jwt.NewParser(opts...),
		subject:     cmpOr(cfg.SubjectClaim, "sub"),
		scope:       cmpOr(cfg.ScopeClaim, "scope"),
		tenantClaim: cmpOr(cfg.TenantClaim, "tenant"),
	}, nil
}

func newKeySet(cfg JWTConfig) (*keySet, error) {
	ks := &keySet{
		source:     cfg.JWKS,
		refresh:    cmpOrDur(cfg.JWKSRefresh, defaultJWKSRefresh),
		minRefresh: cmpOrDur(cfg.JWKSMinRefresh, defaultJWKSMinRefresh),
		client:     cfg.HTTPClient,
		logger:     cfg.Logger,
		now:        cfg.Now,
	}
	if ks.client == nil {
		ks.client = &http.Client{Timeout: jwksFetchTimeout}
	}
	if ks.logger == nil {
		ks.logger = slog.New(slog.DiscardHandler)
	}
	if ks.now == nil {
		ks.now = time.Now
	}
	if len(cfg.Secret) > 0 {
		if len(cfg.Secret) < minSecretBytes {
			return nil, fmt.Errorf("jwt: secret key is %d bytes; HS256 needs at least %d", len(cfg.Secret), minSecretBytes)
		}
		ks.static = append(ks.static, verificationKey{algs: []string{"HS256"}, key: slices.Clone(cfg.Secret)})
	}
	for _, path := range cfg.PublicKeyFiles {
		keys, err := loadPEMKeys(path)
		if err != nil {
			return nil, fmt.Errorf("jwt: %w", err)
		}
		ks.static = append(ks.static, keys...)
	}
	return ks, nil
}

// allAlgs is the union of what the configured key kinds may verify; tokens
// naming anything else are refused before any key is looked up.
func (ks *keySet) allAlgs() []string {
	var algs []string
	for _, k := range ks.static {
		algs = append(algs, k.algs...)
	}
	if ks.source != "" {
		algs = append(algs, rsaAlgs...)
		algs = append(algs, "ES256", "ES384", "ES512", "EdDSA")
	}
	slices.Sort(algs)
	return slices.Compact(algs)
}

// Verify checks token and returns the identity it carries. Every failure
// is a [connect.CodeUnauthenticated] error whose message says what was
// wrong without echoing the token.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (Identity, error) {
	if len(token) > maxTokenBytes {
		return Identity{}, unauthenticated("token too large")
	}
	now := v.keys.now()
	if id, ok := v.cache.get(token, now); ok {
		return id, nil
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if err := refuseCritical(t); err != nil {
			return nil, err
		}
		kid, _ := t.Header["kid"].(string)
		keys := v.keys.candidates(ctx, kid, t.Method.Alg())
		switch len(keys) {
		case 0:
			return nil, errUnknownKey
		case 1:
			return keys[0], nil
		}
		set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(keys))}
		for i, k := range keys {
			set.Keys[i] = k
		}
		return set, nil
	})
	if err != nil {
		return Identity{}, tokenError(err)
	}
	id, err := v.identity(claims)
	if err != nil {
		return Identity{}, err
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		v.cache.put(token, id, exp.Time, now)
	}
	return id, nil
}

var (
	errUnknownKey = errors.New("no key matches the token's kid and alg")
	errCritical   = errors.New("token names critical header parameters")
)

func tokenError(err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return unauthenticated("token expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return unauthenticated("token not valid yet")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return unauthenticated("token issuer not accepted")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return unauthenticated("token audience not accepted")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return unauthenticated("token lacks a required claim")
	case errors.Is(err, errUnknownKey):
		return unauthenticated("token signed by an unknown key")
	case errors.Is(err, errCritical):
		return unauthenticated("token has critical header parameters (crit) that are not supported")
	default:
		return unauthenticated("invalid token")
	}
}

// identity reads the caller from verified claims. A missing tenant is left
// empty for the [Authenticator] to settle; a tenant that is not a string
// is a malformed token.
func (v *JWTVerifier) identity(claims jwt.MapClaims) (Identity, error) {
	sub, _ := claims[v.subject].(string)
	if sub == "" {
		return Identity{}, unauthenticated("token has no subject")
	}
	var tenant string
	if raw, ok := claims[v.tenantClaim]; ok && raw != nil {
		if tenant, ok = raw.(string); !ok {
			return Identity{}, unauthenticated(fmt.Sprintf("token claim %q is not a string", v.tenantClaim))
		}
	}
	id := Identity{Subject: sub, Tenant: tenant, Scopes: scopesOf(claims[v.scope]), Method: MethodJWT}
	if err := id.check("token"); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// scopesOf reads the OAuth 2.0 space-separated scope string, or an array of
// strings as some providers issue (e.g. "scp").
func scopesOf(v any) []string {
	switch s := v.(type) {
	case string:
		return strings.Fields(s)
	case []any:
		out := make([]string, 0, len(s))
		for _, e := range s {
			if str, ok := e.(string); ok && str != "" && !strings.ContainsAny(str, " \t\r\n") {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}

func unauthenticated(msg string) *connect.Error {
	err := connect.NewError(connect.CodeUnauthenticated, errors.New(msg))
	err.Meta().Set("WWW-Authenticate", `Bearer realm="flowgate"`)
	return err
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func cmpOrDur(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// UnverifiedExpiry returns the exp claim of token WITHOUT checking its
// signature: only for refusing tokens early (e.g. long-lived ones where a
// short-lived one is required); [JWTVerifier.Verify] must still run.
func UnverifiedExpiry(token string) (time.Time, error) {
	if len(token) > maxTokenBytes {
		return time.Time{}, errors.New("token too large")
	}
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(token, claims); err != nil {
		return time.Time{}, fmt.Errorf("parse token: %w", err)
	}
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return time.Time{}, errors.New("token has no valid exp claim")
	}
	return exp.Time, nil
}

// refuseCritical follows RFC 7515 §4.1.11: a token naming critical
// extensions the recipient does not understand must be refused, and the
// gateway understands none.
func refuseCritical(t *jwt.Token) error {
	if _, ok := t.Header["crit"]; ok {
		return errCritical
	}
	return nil
}
