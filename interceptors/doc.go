// Package interceptors holds the gateway's Connect interceptors and the
// pieces they share, none of which knows about workflows: authentication
// of bearer tokens and API keys ([Authenticator], [AuthInterceptor]), the
// verified [Identity] carried to backends in gateway-owned headers and
// proved to them by a token signed with a shared key ([BackendTokens],
// checked by [NewBackendAuthInterceptor]), client
// address resolution behind trusted proxies ([ProxyTrust]), and token-bucket
// rate limiting in memory or shared through Redis ([RateLimitInterceptor]).
package interceptors
