package server

import (
	"net/http"
	"strings"

	"github.com/flowgate/flowgate/interceptors"
)

// defaultForwardHeaders are the request headers every forwarded call carries
// to its upstream: correlation and tracing, and the caller identity that the
// gateway itself sets after authentication (client-sent copies are removed
// at the edge). Everything else stays at the gateway unless configured.
var defaultForwardHeaders = []string{
	"X-Request-Id",
	"Traceparent",
	"Tracestate",
	"Baggage",
	"Idempotency-Key",
	"X-Flowgate-Subject",
	"X-Flowgate-Tenant",
	"X-Flowgate-Scopes",
}

// headerPolicy decides which headers cross the gateway.
type headerPolicy struct {
	// request is the allowlist of request headers, in canonical form.
	request []string
	// tokens signs the identity each forwarded call is made for, which is
	// how the backends know a call comes from the gateway.
	tokens *interceptors.BackendTokens
	// anonymous is the identity of calls that carry none: no one (public
	// procedures) when authentication is on, the open gateway's single
	// caller when it is off.
	anonymous backendCaller
}

// backendCaller is an identity as its headers spell it.
type backendCaller struct{ subject, tenant, scopes string }

func newHeaderPolicy(extra []string) headerPolicy {
	seen := make(map[string]bool, len(defaultForwardHeaders)+len(extra))
	var names []string
	for _, name := range append(append([]string(nil), defaultForwardHeaders...), extra...) {
		name = http.CanonicalHeaderKey(strings.TrimSpace(name))
		if name == "" || seen[name] || neverForwarded(name) {
			continue
		}
		seen[name] = true
		names = append(names, name)
	}
	return headerPolicy{request: names}
}

// copyRequest copies the allowlisted headers of an incoming call to an
// outgoing one. Only allowlisted names are read, so the cost does not grow
// with what a caller sends. Not inlined, as copyResponse.
//
//go:noinline
func (p headerPolicy) copyRequest(dst, src http.Header) {
	for _, name := range p.request {
		vals, ok := src[name]
		switch {
		case !ok:
		case dst[name] == nil:
			// Shared, not copied: header values are replaced, never written
			// in place, and the capacity makes an append to either copy.
			dst[name] = vals[:len(vals):len(vals)]
		default:
			dst[name] = append(dst[name], vals...)
		}
	}
	p.signIdentity(dst, src)
}

// signIdentity sets the backend token of the identity the authentication
// interceptor put in src's headers (client copies were removed at the
// edge), or of the anonymous caller when there is none. Signing HS256
// with a key of the right length cannot fail; if it did, the call would go
// without a token and the backend would refuse it (fail closed).
func (p headerPolicy) signIdentity(dst, src http.Header) {
	if p.tokens == nil {
		return
	}
	c := backendCaller{
		subject: headerValue(src, interceptors.HeaderSubject),
		tenant:  headerValue(src, interceptors.HeaderTenant),
		scopes:  headerValue(src, interceptors.HeaderScopes),
	}
	if c.subject == "" {
		c = p.anonymous
	}
	if token, err := p.tokens.Header(c.subject, c.tenant, c.scopes); err == nil {
		dst[interceptors.HeaderToken] = token
	}
}

// headerValue is src.Get for a canonical name, without canonicalizing.
func headerValue(src http.Header, name string) string {
	if vals := src[name]; len(vals) > 0 {
		return vals[0]
	}
	return ""
}

// copyResponse copies upstream response headers or trailers back to the
// caller, leaving out whatever belongs to a protocol or a connection: the
// gateway's own transport writes those for the caller's protocol.
//
// Not inlined: a map iterator in the frame of a function that waits for
// stream messages would stay on every open stream's stack.
//
//go:noinline
func copyResponse(dst, src http.Header) {
	for name, vals := range src {
		if len(vals) == 0 || neverForwarded(name) {
			continue
		}
		dst[name] = append(dst[name], vals...)
	}
}

// neverForwarded reports whether a canonical header name belongs to an RPC
// protocol, to content negotiation, to a single connection, or carries the
// caller's credentials, and so must never be copied from one call to
// another.
func neverForwarded(name string) bool {
	switch name {
	case "Te", "Trailer", "Transfer-Encoding", "Connection", "Keep-Alive",
		"Upgrade", "Host", "User-Agent", "Date", "Server", "Vary", "X-Grpc-Web",
		"Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
		"Authorization", "Cookie", "Set-Cookie", "X-Api-Key":
		return true
	}
	for _, prefix := range []string{"Content-", "Accept", "Connect-", "Grpc-", "Access-Control-"} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// commonHeaderNames are the header names most calls carry, whose
// conversion between gRPC metadata's lower-case keys (or an HTTP/1.1
// client's lower-case names) and HTTP's canonical names is looked up
// instead of computed: computing it allocated a string per header and
// call, on both sides of every gRPC call.
var commonHeaderNames = append([]string{
	"Content-Type", "Content-Length", "Host", "Accept", "Connection", "User-Agent", "Te", "Authorization", "X-Api-Key",
	"Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Timeout", "Accept-Encoding",
	interceptors.HeaderToken,
}, defaultForwardHeaders...)

// canonicalNames maps lower-case keys to canonical names; lowerNames the
// other way. Both are fixed at start-up: names callers choose are
// converted as before rather than remembered.
var canonicalNames, lowerNames = func() (map[string]string, map[string]string) {
	canonical := make(map[string]string, len(commonHeaderNames))
	lower := make(map[string]string, len(commonHeaderNames))
	for _, name := range commonHeaderNames {
		name = http.CanonicalHeaderKey(name)
		canonical[strings.ToLower(name)] = name
		lower[name] = strings.ToLower(name)
	}
	return canonical, lower
}()

// canonicalName is http.CanonicalHeaderKey(key), for a metadata key or
// an HTTP/1.1 header name. Only a lower-case name can be a common one
// looked up; any other goes straight to the computation.
func canonicalName(key string) string {
	if key != "" && 'a' <= key[0] && key[0] <= 'z' {
		if name, ok := canonicalNames[key]; ok {
			return name
		}
	}
	return http.CanonicalHeaderKey(key)
}

// lowerName is strings.ToLower(name) for a header name.
func lowerName(name string) string {
	if key, ok := lowerNames[name]; ok {
		return key
	}
	return strings.ToLower(name)
}
