package interceptors

import (
	"context"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
)

// Headers the gateway owns: it removes any copy a client sent and sets them
// from the verified credentials before a call is forwarded to a backend.
const (
	HeaderSubject = "X-Flowgate-Subject"
	HeaderTenant  = "X-Flowgate-Tenant"
	HeaderScopes  = "X-Flowgate-Scopes"
	// HeaderToken carries the gateway's proof of the identity to the
	// backends: a short-lived token signed with the key they share
	// ([BackendTokens]).
	HeaderToken = "X-Flowgate-Token"
	// IdentityHeaderPrefix is the namespace of every gateway-owned header.
	IdentityHeaderPrefix = "X-Flowgate-"
)

// Credential kinds recorded in [Identity.Method].
const (
	MethodJWT    = "jwt"
	MethodAPIKey = "api_key"
)

// Identity is an authenticated caller.
type Identity struct {
	Subject string
	Tenant  string
	Scopes  []string
	// Method is how the caller authenticated: [MethodJWT] or [MethodAPIKey].
	Method string
}

// HasScope reports whether the identity was granted scope.
func (id Identity) HasScope(scope string) bool {
	return slices.Contains(id.Scopes, scope)
}

// MissingScope returns the first of the space-separated scopes in required
// that the identity was not granted; ok is true when it holds them all.
func (id Identity) MissingScope(required string) (missing string, ok bool) {
	if oneScope(required) {
		// As most rules ask: no need to split.
		return required, id.HasScope(required)
	}
	for scope := range strings.FieldsSeq(required) {
		if !id.HasScope(scope) {
			return scope, false
		}
	}
	return "", true
}

// oneScope reports whether s is a single scope: printable ASCII without
// spaces, which strings.Fields would return whole.
func oneScope(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return s != ""
}

// check refuses an identity whose names cannot travel in a header; source
// ("token", "API key") says where it came from.
func (id Identity) check(source string) *connect.Error {
	if !validName(id.Subject) || !validName(id.Tenant) {
		return unauthenticated(source + " subject or tenant has control characters, invalid UTF-8 or is too long")
	}
	for _, sc := range id.Scopes {
		if !validName(sc) {
			return unauthenticated(source + " scope has control characters, invalid UTF-8 or is too long")
		}
	}
	return nil
}

// maxNameBytes bounds a subject or tenant.
const maxNameBytes = 256

// validName reports whether s may be a subject, tenant or scope: it is
// sent to the backends in a header and stored beside their data, so it
// must be printable UTF-8 of bounded length. A control character would
// otherwise make the upstream call fail (a 502 for what is the
// credential's fault) or split a log line.
func validName(s string) bool {
	if len(s) > maxNameBytes || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// SetHeaders writes the identity into the gateway-owned headers of h,
// replacing whatever was there.
func (id Identity) SetHeaders(h http.Header) {
	ClearIdentity(h)
	// The values share one allocation; each slice is full, so that an
	// append to one copies it.
	vals := [...]string{id.Subject, id.Tenant, ""}
	n := 1
	if id.Tenant != "" {
		n++
	}
	if len(id.Scopes) > 0 {
		vals[n] = strings.Join(id.Scopes, " ")
		n++
	}
	shared := slices.Clone(vals[:n])
	h[HeaderSubject] = shared[0:1:1]
	if id.Tenant != "" {
		h[HeaderTenant] = shared[1:2:2]
	}
	if len(id.Scopes) > 0 {
		h[HeaderScopes] = shared[n-1 : n : n]
	}
}

// ClearIdentity removes the three identity headers from h, leaving the
// gateway's other internal headers alone. The names are canonical already.
func ClearIdentity(h http.Header) {
	delete(h, HeaderSubject)
	delete(h, HeaderTenant)
	delete(h, HeaderScopes)
}

// StripIdentityHeaders removes every gateway-owned header from h, so that
// nothing a client sends can pose as a verified identity.
func StripIdentityHeaders(h http.Header) {
	for name := range h {
		if len(name) >= len(IdentityHeaderPrefix) &&
			strings.EqualFold(name[:len(IdentityHeaderPrefix)], IdentityHeaderPrefix) &&
			!senderHeader(name) {
			delete(h, name)
		}
	}
}

// senderHeader reports whether a header is one a webhook sender sets under
// the gateway's prefix: its signature and timestamp, which the runtime
// checks and which prove nothing about identity at the gateway.
func senderHeader(name string) bool {
	return strings.EqualFold(name, "X-Flowgate-Signature") || strings.EqualFold(name, "X-Flowgate-Timestamp")
}

type identityKey struct{}

// valueContext is context.WithValue(ctx, K{}, value) in one allocation
// rather than two (the value's and the context's). Its Value hands out a
// pointer to the value: a struct returned as an interface would be copied
// to the heap on every lookup.
type valueContext[K comparable, V any] struct {
	context.Context
	value V
}

func (c *valueContext[K, V]) Value(key any) any {
	if _, ok := key.(K); ok {
		return &c.value
	}
	return c.Context.Value(key)
}

// WithIdentity returns a context carrying id.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return &valueContext[identityKey, Identity]{Context: ctx, value: id}
}

// IdentityFromContext returns the caller authenticated for this call, if any.
func IdentityFromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	if !ok {
		return Identity{}, false
	}
	return *id, true
}

type clientIPKey struct{}

// WithClientIP returns a context carrying the caller's address as resolved
// by the HTTP layer (connection address, or X-Forwarded-For from a trusted
// proxy).
func WithClientIP(ctx context.Context, ip netip.Addr) context.Context {
	return &valueContext[clientIPKey, netip.Addr]{Context: ctx, value: ip}
}

// ClientIPFromContext returns the address stored by [WithClientIP].
func ClientIPFromContext(ctx context.Context) (netip.Addr, bool) {
	ip, ok := ctx.Value(clientIPKey{}).(*netip.Addr)
	if !ok {
		return netip.Addr{}, false
	}
	return *ip, ip.IsValid()
}
