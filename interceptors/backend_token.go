package interceptors

import (
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Backend tokens prove to a backend that a call comes from the gateway (or
// a sibling backend) and whom it is made for. They are HS256 JWTs signed
// with a key the gateway and the backends share, carrying the subject,
// tenant and scopes, valid for [BackendTokenTTL].
const (
	// BackendTokenTTL is how long a backend token is valid. A signed token
	// is reused for calls of the same identity until half of it is left,
	// so a backend always gets at least half of it.
	BackendTokenTTL = 5 * time.Minute
	// MinBackendKeyBytes is the shortest shared key accepted (RFC 7518
	// §3.2: at least the hash output).
	MinBackendKeyBytes = 32

	backendTokenIssuer   = "flowgate"
	backendTokenAudience = "flowgate-backends"
	backendTokenLeeway   = 30 * time.Second
	// backendSignCacheLimit bounds the identities whose token is kept; past
	// it the cache starts over (each identity then signs once more).
	backendSignCacheLimit = 16384
)

// MethodBackendToken is the [Identity.Method] of an identity read from a
// backend token.
const MethodBackendToken = "backend_token"

// GenerateBackendKey returns a random key for a process that runs the
// gateway and its backends together and so needs no configured key.
func GenerateBackendKey() []byte {
	key := make([]byte, MinBackendKeyBytes)
	_, _ = rand.Read(key) // never fails (crypto/rand)
	return key
}

// BackendTokens signs and verifies backend tokens with one shared key.
type BackendTokens struct {
	key      []byte
	now      func() time.Time
	parser   *jwt.Parser
	signed   sync.Map // backendIdentity -> *signedToken
	size     atomic.Int64
	verified *tokenCache
}

// backendIdentity is the cache key of a signed token: the identity as it
// travels in headers (scopes space separated).
type backendIdentity struct{ subject, tenant, scopes string }

type signedToken struct {
	header  []string // the header value, shared by every call that uses it
	refresh time.Time
}

// NewBackendTokens returns a signer and verifier for key, which must be at
// least [MinBackendKeyBytes] long. now is the clock (nil: time.Now).
func NewBackendTokens(key []byte, now func() time.Time) (*BackendTokens, error) {
	if len(key) < MinBackendKeyBytes {
		return nil, fmt.Errorf("backend key is %d bytes; at least %d are needed", len(key), MinBackendKeyBytes)
	}
	if now == nil {
		now = time.Now
	}
	return &BackendTokens{
		key: slices.Clone(key),
		now: now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"HS256"}),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithIssuer(backendTokenIssuer),
			jwt.WithAudience(backendTokenAudience),
			jwt.WithLeeway(backendTokenLeeway),
			jwt.WithTimeFunc(now),
			jwt.WithStrictDecoding(),
		),
		verified: newTokenCache(),
	}, nil
}

// Header returns the [HeaderToken] value for an identity given as its
// header values (scopes space separated). Tokens are signed once per
// identity and reused until half their lifetime is left, so a call costs a
// map lookup; the returned slice is shared and must not be modified.
func (b *BackendTokens) Header(subject, tenant, scopes string) ([]string, error) {
	key := backendIdentity{subject, tenant, scopes}
	now := b.now()
	if v, ok := b.signed.Load(key); ok {
		if st := v.(*signedToken); now.Before(st.refresh) {
			return st.header, nil
		}
	}
	token, err := b.sign(key, now)
	if err != nil {
		return nil, err
	}
	st := &signedToken{header: []string{token}, refresh: now.Add(BackendTokenTTL / 2)}
	if b.size.Add(1) > backendSignCacheLimit {
		b.signed.Clear()
		b.size.Store(1)
	}
	b.signed.Store(key, st)
	return st.header, nil
}

func (b *BackendTokens) sign(id backendIdentity, now time.Time) (string, error) {
	claims := jwt.MapClaims{
		"iss": backendTokenIssuer,
		"aud": backendTokenAudience,
		"iat": now.Unix(),
		"exp": now.Add(BackendTokenTTL).Unix(),
		"sub": id.subject,
	}
	if id.tenant != "" {
		claims["tenant"] = id.tenant
	}
	if id.scopes != "" {
		claims["scope"] = id.scopes
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(b.key)
	if err != nil {
		return "", fmt.Errorf("sign backend token: %w", err)
	}
	return token, nil
}

// Verify checks a backend token and returns the identity it carries; an
// anonymous caller of a public procedure has an empty subject. Tokens that
// verified are remembered until they expire.
func (b *BackendTokens) Verify(token string) (Identity, error) {
	if token == "" {
		return Identity{}, errMissingBackendToken
	}
	if len(token) > maxTokenBytes {
		return Identity{}, unauthenticated("gateway token too large")
	}
	now := b.now()
	if id, ok := b.verified.get(token, now); ok {
		return id, nil
	}
	claims := jwt.MapClaims{}
	_, err := b.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if err := refuseCritical(t); err != nil {
			return nil, err
		}
		return b.key, nil
	})
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return Identity{}, unauthenticated("gateway token expired")
		}
		return Identity{}, unauthenticated("invalid gateway token")
	}
	id, err := backendIdentityOf(claims)
	if err != nil {
		return Identity{}, err
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		b.verified.put(token, id, exp.Add(backendTokenLeeway), now)
	}
	return id, nil
}

var errMissingBackendToken = unauthenticated("missing gateway token: the backends accept calls from the Flowgate gateway only")

func backendIdentityOf(claims jwt.MapClaims) (Identity, error) {
	sub, _ := claims["sub"].(string)
	tenant, _ := claims["tenant"].(string)
	scope, _ := claims["scope"].(string)
	id := Identity{Subject: sub, Tenant: tenant, Scopes: strings.Fields(scope), Method: MethodBackendToken}
	if err := id.check("gateway token"); err != nil {
		return Identity{}, err
	}
	return id, nil
}
