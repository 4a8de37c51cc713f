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

// withBackendTokens makes p sign every forwarded call for the backends,
// with the configured key or, when there is none (the embedded default,
// or tests whose backends do not check), a key of this process alone.
func (s *security) withBackendTokens(p headerPolicy) (headerPolicy, error) {
	key := []byte(s.cfg.BackendKey)
	if len(key) == 0 {
		key = interceptors.GenerateBackendKey()
	}
	tokens, err := interceptors.NewBackendTokens(key, nil)
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
