package server

import (
	"fmt"
	"slices"
	"strings"

	"github.com/flowgate/flowgate/interceptors"
)

// openTenant is the tenant of the open gateway's single caller when no
// default tenant is configured: with authentication off there is one
// caller, and the data it made before tenants were enforced is there.
const openTenant = "default"

// openSubject is the subject of the open gateway's caller.
const openSubject = "anonymous"

// withBackendTokens makes p sign every forwarded call for the backends
// with the configured key. Without one, calls go without a token: a token
// signed with a key no backend holds proves nothing to anyone, while each
// backend would still receive, validate and keep a 300-byte header on
// every call (about a twelfth of what a null grpc-go backend spends on one).
// The embedded backends always get a key: the command makes one for its
// process.
func (s *security) withBackendTokens(p headerPolicy) (headerPolicy, error) {
	if s.cfg.BackendKey == "" {
		return p, nil
	}
	tokens, err := interceptors.NewBackendTokens([]byte(s.cfg.BackendKey), nil)
	if err != nil {
		return p, fmt.Errorf("security: %w", err)
	}
	p.tokens = tokens
	if !s.auth.Enabled() {
		p.anonymous = backendCaller{
			subject: openSubject,
			tenant:  cmpOr(s.cfg.DefaultTenant, openTenant),
			scopes:  strings.Join(allScopes(s.rules), " "),
		}
	}
	return p, nil
}

// allScopes lists every scope some rule asks for: what the open gateway's
// caller holds, since with authentication off anyone may call anything.
func allScopes(rules map[string]interceptors.AccessRule) []string {
	var scopes []string
	for _, r := range rules {
		scopes = append(scopes, strings.Fields(r.Scope)...)
	}
	slices.Sort(scopes)
	return slices.Compact(scopes)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
