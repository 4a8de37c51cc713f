package interceptors

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// HeaderAPIKey carries service callers' API keys.
const HeaderAPIKey = "X-API-Key"

// APIKey is an accepted API key, configured by the hex SHA-256 of the key so
// the configuration never holds a usable secret.
type APIKey struct {
	SHA256  string   `json:"sha256"`
	Subject string   `json:"subject"`
	Tenant  string   `json:"tenant,omitempty"`
	Scopes  []string `json:"scopes,omitempty"`
}

// ParseAPIKeys decodes the API key configuration, in either of two forms:
//
//   - compact, for environment variables: entries separated by ";", each
//     "sha256hex:subject:tenant:scope1 scope2" (subject and tenant cannot
//     contain ":"; the scopes, last, may);
//   - a JSON array of {"sha256", "subject", "tenant", "scopes": [...]}.
//
// An empty string means no API keys.
func ParseAPIKeys(s string) ([]APIKey, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return nil, nil
	case strings.HasPrefix(s, "["):
		dec := json.NewDecoder(strings.NewReader(s))
		dec.DisallowUnknownFields()
		var keys []APIKey
		if err := dec.Decode(&keys); err != nil {
			return nil, fmt.Errorf("api keys: %w", err)
		}
		return keys, nil
	}
	var keys []APIKey
	for i, entry := range strings.Split(s, ";") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		parts := strings.SplitN(entry, ":", 4)
		if len(parts) < 2 {
			return nil, fmt.Errorf("api key %d: want sha256hex:subject:tenant:scopes", i)
		}
		k := APIKey{SHA256: parts[0], Subject: parts[1]}
		if len(parts) > 2 {
			k.Tenant = parts[2]
		}
		if len(parts) > 3 {
			k.Scopes = strings.Fields(parts[3])
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// HashAPIKey returns the hex SHA-256 under which key is configured.
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// AuthConfig configures an [Authenticator]. Authentication is enabled iff
// the JWT config has a key source or there is at least one API key.
type AuthConfig struct {
	JWT     JWTConfig
	APIKeys []APIKey
	// DefaultTenant is the tenant of credentials that name none (single-
	// tenant mode). Empty refuses them: tenant-less callers would
	// otherwise all share whatever data an unnamed tenant holds.
	DefaultTenant string
}

// Authenticator turns request credentials into an [Identity].
type Authenticator struct {
	jwt           *JWTVerifier
	apiKeys       map[[sha256.Size]byte]Identity
	defaultTenant string
}

// NewAuthenticator validates cfg and loads its keys.
func NewAuthenticator(ctx context.Context, cfg AuthConfig) (*Authenticator, error) {
	if cfg.DefaultTenant != "" && !validName(cfg.DefaultTenant) {
		return nil, fmt.Errorf("default tenant %q has control characters, invalid UTF-8 or is too long", cfg.DefaultTenant)
	}
	a := &Authenticator{defaultTenant: cfg.DefaultTenant}
	if cfg.JWT.Enabled() {
		v, err := NewJWTVerifier(ctx, cfg.JWT)
		if err != nil {
			return nil, err
		}
		a.jwt = v
	}
	if len(cfg.APIKeys) > 0 {
		a.apiKeys = make(map[[sha256.Size]byte]Identity, len(cfg.APIKeys))
	}
	for i, k := range cfg.APIKeys {
		sum, err := hex.DecodeString(strings.TrimSpace(k.SHA256))
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("api key %d: sha256 must be 64 hex digits", i)
		}
		if k.Subject == "" {
			return nil, fmt.Errorf("api key %d: subject is required", i)
		}
		for _, sc := range k.Scopes {
			if sc == "" || strings.ContainsAny(sc, " \t\r\n") {
				return nil, fmt.Errorf("api key %d: scope %q is empty or contains spaces", i, sc)
			}
		}
		var h [sha256.Size]byte
		copy(h[:], sum)
		if _, dup := a.apiKeys[h]; dup {
			return nil, fmt.Errorf("api key %d: duplicate hash", i)
		}
		id := Identity{Subject: k.Subject, Tenant: k.Tenant, Scopes: k.Scopes, Method: MethodAPIKey}
		if err := id.check("api key"); err != nil {
			return nil, fmt.Errorf("api key %d: %s", i, err.Message())
		}
		a.apiKeys[h] = id
	}
	return a, nil
}

// TenantlessAPIKeys counts the configured API keys that name no tenant:
// without a default tenant every call made with them is refused.
func (a *Authenticator) TenantlessAPIKeys() int {
	n := 0
	for _, id := range a.apiKeys {
		if id.Tenant == "" {
			n++
		}
	}
	return n
}

// Enabled reports whether any credential source is configured.
func (a *Authenticator) Enabled() bool {
	return a != nil && (a.jwt != nil || len(a.apiKeys) > 0)
}

// Authenticate verifies the one credential in h: an X-API-Key or an
// Authorization bearer token. Sending both, or several of either, is
// refused rather than guessing which one counts. Credentials that name no
// tenant get the default tenant, or are refused when there is none.
func (a *Authenticator) Authenticate(ctx context.Context, h http.Header) (Identity, error) {
	id, err := a.credential(ctx, h)
	if err != nil || id.Tenant != "" {
		return id, err
	}
	if a.defaultTenant == "" {
		return Identity{}, unauthenticated("credentials name no tenant, and no default tenant is configured (single-tenant mode)")
	}
	id.Tenant = a.defaultTenant
	return id, nil
}

func (a *Authenticator) credential(ctx context.Context, h http.Header) (Identity, error) {
	// Direct lookups: h.Values would canonicalize "X-API-Key" into a new
	// string on every call.
	keys, auths := h[canonicalAPIKey], h["Authorization"]
	switch {
	case len(keys)+len(auths) == 0:
		return Identity{}, unauthenticated("missing credentials")
	case len(keys)+len(auths) > 1:
		return Identity{}, unauthenticated("send exactly one credential")
	case len(keys) == 1:
		return a.apiKey(keys[0])
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(auths[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return Identity{}, unauthenticated("authorization must be a bearer token")
	}
	if a.jwt == nil {
		return Identity{}, unauthenticated("bearer tokens are not accepted")
	}
	return a.jwt.Verify(ctx, strings.TrimSpace(token))
}

func (a *Authenticator) apiKey(key string) (Identity, error) {
	if len(a.apiKeys) == 0 {
		return Identity{}, unauthenticated("API keys are not accepted")
	}
	key = strings.TrimSpace(key)
	if key == "" || len(key) > 1024 || strings.ContainsAny(key, "\x00\r\n") {
		return Identity{}, unauthenticated("invalid API key")
	}
	id, ok := a.apiKeys[sha256.Sum256([]byte(key))]
	if !ok {
		return Identity{}, unauthenticated("invalid API key")
	}
	return id, nil
}
