package interceptors

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// backendAuth implements [NewBackendAuthInterceptor].
type backendAuth struct {
	tokens        *BackendTokens
	rules         map[string]AccessRule
	requireTenant bool
}

// NewBackendAuthInterceptor returns the backends' side of [BackendTokens]:
// every call must carry a valid [HeaderToken], whose identity then
// replaces the identity headers of the request (whatever a caller put
// there is discarded) and must satisfy the procedure's [AccessRule] — the
// same rules the gateway enforces, checked again where the data is.
// Procedures absent from the rules need an authenticated caller and no
// scope. requireTenant refuses non-public calls whose identity names no
// tenant, for services that keep data per tenant.
func NewBackendAuthInterceptor(tokens *BackendTokens, rules map[string]AccessRule, requireTenant bool) connect.Interceptor {
	i := &backendAuth{tokens: tokens, rules: rules, requireTenant: requireTenant}
	return headerCheck(i.check)
}

func (i *backendAuth) check(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	id, err := i.tokens.Verify(h.Get(HeaderToken))
	if err != nil {
		return ctx, err
	}
	h.Del(HeaderToken)
	ClearIdentity(h)
	rule := i.rules[procedure]
	if rule.Public {
		return ctx, nil
	}
	switch {
	case id.Subject == "":
		return ctx, unauthenticated("the gateway token names no caller")
	case i.requireTenant && id.Tenant == "":
		return ctx, unauthenticated("the gateway token names no tenant")
	}
	if err := checkScopes(id, rule); err != nil {
		return ctx, err
	}
	id.SetHeaders(h)
	return WithIdentity(ctx, id), nil
}

// BackendClientInterceptor signs the calls one backend makes to another.
// Without a service identity it acts for the caller whose identity headers
// the request carries (as the agent does when it reads and writes
// workflows for a user: the callee then enforces that user's scopes);
// with one, it calls as that service, in the tenant of the request's
// identity header when the service names none.
type BackendClientInterceptor struct {
	tokens  *BackendTokens
	service *Identity
}

var _ connect.Interceptor = (*BackendClientInterceptor)(nil)

// NewBackendClientInterceptor returns the client interceptor; service may
// be nil.
func NewBackendClientInterceptor(tokens *BackendTokens, service *Identity) *BackendClientInterceptor {
	return &BackendClientInterceptor{tokens: tokens, service: service}
}

var errNoCaller = connect.NewError(connect.CodeInternal, errors.New("a backend call carries no caller identity"))

func (c *BackendClientInterceptor) sign(h http.Header) error {
	subject, tenant, scopes := h.Get(HeaderSubject), h.Get(HeaderTenant), h.Get(HeaderScopes)
	if c.service != nil {
		subject, scopes = c.service.Subject, strings.Join(c.service.Scopes, " ")
		if c.service.Tenant != "" {
			tenant = c.service.Tenant
		}
	}
	if subject == "" {
		return errNoCaller
	}
	token, err := c.tokens.Header(subject, tenant, scopes)
	if err != nil {
		return connect.NewError(connect.CodeInternal, err)
	}
	h[HeaderToken] = token
	return nil
}

// WrapUnary implements [connect.Interceptor].
func (c *BackendClientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			if err := c.sign(req.Header()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements [connect.Interceptor]. A stream without
// an identity goes unsigned, and the callee refuses it.
func (c *BackendClientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		_ = c.sign(conn.RequestHeader())
		return conn
	}
}

// WrapStreamingHandler implements [connect.Interceptor].
func (c *BackendClientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
