package interceptors

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
)

// AccessRule says who may call a procedure: anyone (Public), or an
// authenticated caller holding every space-separated scope of Scope (no
// particular scope when empty).
type AccessRule struct {
	Scope  string
	Public bool
}

// AuthInterceptor authenticates the caller of every handler call, checks the
// procedure's [AccessRule], and on success puts the [Identity] both in the
// context and in the request's gateway-owned headers, which is where
// forwarders pick it up for the backend. Procedures absent from the rules
// require credentials and no particular scope, so a forgotten rule fails
// closed.
type AuthInterceptor struct {
	auth  *Authenticator
	rules map[string]AccessRule
}

var _ connect.Interceptor = (*AuthInterceptor)(nil)

// NewAuthInterceptor returns the interceptor for auth (which must be
// enabled) and rules, keyed by procedure ("/pkg.Service/Method").
func NewAuthInterceptor(auth *Authenticator, rules map[string]AccessRule) (*AuthInterceptor, error) {
	if !auth.Enabled() {
		return nil, fmt.Errorf("auth interceptor: no credential source configured")
	}
	return &AuthInterceptor{auth: auth, rules: rules}, nil
}

func (i *AuthInterceptor) check(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	rule := i.rules[procedure]
	if rule.Public {
		ClearIdentity(h)
		return ctx, nil
	}
	id, err := i.auth.Authenticate(ctx, h)
	if err != nil {
		return ctx, err
	}
	if err := checkScopes(id, rule); err != nil {
		return ctx, err
	}
	// Credentials are for the gateway; the backend gets the verified
	// identity instead.
	delete(h, "Authorization")
	delete(h, canonicalAPIKey)
	id.SetHeaders(h)
	return WithIdentity(ctx, id), nil
}

// canonicalAPIKey is [HeaderAPIKey] as http.Header keys it.
var canonicalAPIKey = http.CanonicalHeaderKey(HeaderAPIKey)

// WrapUnary implements [connect.Interceptor].
func (i *AuthInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return headerCheck(i.check).WrapUnary(next)
}

// WrapStreamingClient implements [connect.Interceptor]; outbound streams
// carry whatever the handler side established.
func (i *AuthInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (i *AuthInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return headerCheck(i.check).WrapStreamingHandler(next)
}

// headerCheck is an interceptor that judges each call it handles by its
// procedure and request headers, which it may rewrite, before the handler
// runs; outbound calls pass untouched.
type headerCheck func(ctx context.Context, procedure string, h http.Header) (context.Context, error)

var _ connect.Interceptor = headerCheck(nil)

func (check headerCheck) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (check headerCheck) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, err := check(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (check headerCheck) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := check(ctx, conn.Spec().Procedure, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// checkScopes refuses an identity that lacks one of the rule's scopes.
func checkScopes(id Identity, rule AccessRule) error {
	if missing, ok := id.MissingScope(rule.Scope); !ok {
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("missing scope %q", missing))
	}
	return nil
}
