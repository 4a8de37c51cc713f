package interceptors_test

import (
	"context"
	"fmt"
	"net/http/httptest"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/flowgate/flowgate/interceptors"
)

// The security interceptors run in this order: the per-IP limit first, so
// that guessing credentials is limited too; then authentication and the
// procedure's access rule; then the per-subject limit, which needs the
// authenticated subject. The handler sees the verified identity.
func ExampleNewAuthInterceptor() {
	ctx := context.Background()
	keys, _ := interceptors.ParseAPIKeys(interceptors.HashAPIKey("k-123") + ":reporter:acme:workflows:read")
	auth, _ := interceptors.NewAuthenticator(ctx, interceptors.AuthConfig{APIKeys: keys})
	rules := map[string]interceptors.AccessRule{"/demo.v1.Demo/Read": {Scope: "workflows:read"}}
	limits := interceptors.RateLimitConfig{
		Limiter:    interceptors.NewLocalLimiter(nil),
		PerIP:      interceptors.Limit{Rate: 100, Burst: 100},
		PerSubject: interceptors.Limit{Rate: 1, Burst: 1},
	}
	byIP, _ := interceptors.NewRateLimitInterceptor(limits, interceptors.ByClientIP)
	authz, _ := interceptors.NewAuthInterceptor(auth, rules)
	bySubject, _ := interceptors.NewRateLimitInterceptor(limits, interceptors.BySubject)

	handler := connect.NewUnaryHandler("/demo.v1.Demo/Read",
		func(ctx context.Context, req *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
			id, _ := interceptors.IdentityFromContext(ctx)
			fmt.Println("handler:", id.Subject, id.Tenant, req.Header().Get(interceptors.HeaderTenant))
			return connect.NewResponse(&emptypb.Empty{}), nil
		},
		connect.WithInterceptors(byIP, authz, bySubject),
	)
	srv := httptest.NewServer(handler)
	defer srv.Close()
	client := connect.NewClient[emptypb.Empty, emptypb.Empty](srv.Client(), srv.URL+"/demo.v1.Demo/Read")
	for _, key := range []string{"wrong", "k-123", "k-123"} {
		req := connect.NewRequest(&emptypb.Empty{})
		req.Header().Set(interceptors.HeaderAPIKey, key)
		req.Header().Set(interceptors.HeaderTenant, "spoofed")
		if _, err := client.CallUnary(ctx, req); err != nil {
			fmt.Println("refused:", connect.CodeOf(err))
		}
	}
	// Output:
	// refused: unauthenticated
	// handler: reporter acme acme
	// refused: resource_exhausted
}
