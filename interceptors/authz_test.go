package interceptors

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// seen records what a handler behind the interceptors received.
type seen struct {
	mu      sync.Mutex
	headers []http.Header
	ids     []Identity
}

func (s *seen) add(ctx context.Context, h http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.headers = append(s.headers, h.Clone())
	id, _ := IdentityFromContext(ctx)
	s.ids = append(s.ids, id)
}

func (s *seen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.headers)
}

// startAuthServer serves a unary procedure per rule and one server stream,
// all behind the auth interceptor.
func startAuthServer(t *testing.T, ics ...connect.Interceptor) (*seen, string) {
	t.Helper()
	rec := &seen{}
	opts := connect.WithInterceptors(ics...)
	mux := http.NewServeMux()
	unary := func(ctx context.Context, req *connect.Request[emptypb.Empty]) (*connect.Response[emptypb.Empty], error) {
		rec.add(ctx, req.Header())
		return connect.NewResponse(&emptypb.Empty{}), nil
	}
	for _, proc := range []string{"/t.v1.S/Read", "/t.v1.S/Write", "/t.v1.S/Public", "/t.v1.S/NoRule"} {
		mux.Handle(proc, connect.NewUnaryHandler(proc, unary, opts))
	}
	mux.Handle("/t.v1.S/Stream", connect.NewServerStreamHandler("/t.v1.S/Stream",
		func(ctx context.Context, req *connect.Request[emptypb.Empty], stream *connect.ServerStream[wrapperspb.StringValue]) error {
			rec.add(ctx, req.Header())
			return stream.Send(wrapperspb.String("hi"))
		}, opts))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return rec, srv.URL
}

var testRules = map[string]AccessRule{
	"/t.v1.S/Read":   {Scope: "workflows:read"},
	"/t.v1.S/Write":  {Scope: "workflows:write"},
	"/t.v1.S/Public": {Public: true},
	"/t.v1.S/Stream": {Scope: "agent:chat"},
}

func newTestAuth(t *testing.T) *Authenticator {
	t.Helper()
	keys, _ := ParseAPIKeys(`[{"sha256":"` + HashAPIKey("reader-key") + `","subject":"reader","tenant":"t1","scopes":["workflows:read"]}]`)
	a, err := NewAuthenticator(t.Context(), AuthConfig{JWT: JWTConfig{Secret: []byte(testSecret)}, APIKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func call(t *testing.T, url, proc string, h http.Header) error {
	t.Helper()
	client := connect.NewClient[emptypb.Empty, emptypb.Empty](http.DefaultClient, url+proc)
	req := connect.NewRequest(&emptypb.Empty{})
	for k, v := range h {
		req.Header()[k] = v
	}
	_, err := client.CallUnary(t.Context(), req)
	return err
}

func TestAuthInterceptor(t *testing.T) {
	t.Parallel()
	ic, err := NewAuthInterceptor(newTestAuth(t), testRules)
	if err != nil {
		t.Fatal(err)
	}
	rec, url := startAuthServer(t, ic)
	token := mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{
		"sub": "alice", "tenant": "acme", "scope": "workflows:read agent:chat", "exp": time.Now().Add(time.Minute).Unix(),
	})
	bearer := http.Header{"Authorization": {"Bearer " + token}}
	spoof := http.Header{
		"Authorization":      {"Bearer " + token},
		"X-Flowgate-Tenant":  {"victim"},
		"X-Flowgate-Subject": {"root"},
		"X-Flowgate-Scopes":  {"workflows:write"},
	}
	cases := []struct {
		name string
		proc string
		h    http.Header
		want connect.Code // 0: allowed
	}{
		{"token with scope", "/t.v1.S/Read", bearer, 0},
		{"token without scope", "/t.v1.S/Write", bearer, connect.CodePermissionDenied},
		{"spoofed identity headers do not grant scopes", "/t.v1.S/Write", spoof, connect.CodePermissionDenied},
		{"api key with scope", "/t.v1.S/Read", http.Header{apiKeyHeader: {"reader-key"}}, 0},
		{"api key without scope", "/t.v1.S/Write", http.Header{apiKeyHeader: {"reader-key"}}, connect.CodePermissionDenied},
		{"revoked api key", "/t.v1.S/Read", http.Header{apiKeyHeader: {"revoked"}}, connect.CodeUnauthenticated},
		{"no credentials", "/t.v1.S/Read", nil, connect.CodeUnauthenticated},
		{"public without credentials", "/t.v1.S/Public", nil, 0},
		{"public with garbage credentials", "/t.v1.S/Public", http.Header{"Authorization": {"Bearer junk"}}, 0},
		{"procedure without rule needs credentials", "/t.v1.S/NoRule", nil, connect.CodeUnauthenticated},
		{"procedure without rule, any scope", "/t.v1.S/NoRule", bearer, 0},
	}
	for _, tc := range cases {
		before := rec.count()
		err := call(t, url, tc.proc, tc.h)
		if got := connect.CodeOf(err); (err == nil) != (tc.want == 0) || (err != nil && got != tc.want) {
			t.Errorf("%s: err = %v, want code %v", tc.name, err, tc.want)
		}
		if reached := rec.count() > before; reached != (tc.want == 0) {
			t.Errorf("%s: handler reached = %v", tc.name, reached)
		}
	}
	if err := call(t, url, "/t.v1.S/Read", spoof); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	h, id := rec.headers[len(rec.headers)-1], rec.ids[len(rec.ids)-1]
	rec.mu.Unlock()
	if h.Get(HeaderTenant) != "acme" || h.Get(HeaderSubject) != "alice" || h.Get(HeaderScopes) != "workflows:read agent:chat" {
		t.Errorf("identity headers = %v", h)
	}
	if len(h.Values(HeaderTenant)) != 1 {
		t.Errorf("spoofed tenant kept alongside the real one: %v", h.Values(HeaderTenant))
	}
	if h.Get("Authorization") != "" {
		t.Error("credentials were passed on to the handler")
	}
	if id.Subject != "alice" || id.Tenant != "acme" {
		t.Errorf("context identity = %+v", id)
	}
}

func TestAuthInterceptorStreams(t *testing.T) {
	t.Parallel()
	ic, err := NewAuthInterceptor(newTestAuth(t), testRules)
	if err != nil {
		t.Fatal(err)
	}
	rec, url := startAuthServer(t, ic)
	client := connect.NewClient[emptypb.Empty, wrapperspb.StringValue](http.DefaultClient, url+"/t.v1.S/Stream", connect.WithGRPCWeb())
	stream, err := client.CallServerStream(t.Context(), connect.NewRequest(&emptypb.Empty{}))
	if err != nil {
		t.Fatal(err)
	}
	for stream.Receive() {
		t.Error("stream delivered a message without credentials")
	}
	if connect.CodeOf(stream.Err()) != connect.CodeUnauthenticated {
		t.Errorf("stream err = %v", stream.Err())
	}
	req := connect.NewRequest(&emptypb.Empty{})
	req.Header().Set("Authorization", "Bearer "+mint(t, jwt.SigningMethodHS256, []byte(testSecret), "", jwt.MapClaims{
		"sub": "bob", "tenant": "t1", "scope": "agent:chat", "exp": time.Now().Add(time.Minute).Unix(),
	}))
	stream, err = client.CallServerStream(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for stream.Receive() {
		n++
	}
	if stream.Err() != nil || n != 1 || rec.count() != 1 {
		t.Errorf("authorized stream: %d messages, err %v, handler calls %d", n, stream.Err(), rec.count())
	}
}

func TestAuthInterceptorNeedsCredentials(t *testing.T) {
	t.Parallel()
	a, err := NewAuthenticator(t.Context(), AuthConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewAuthInterceptor(a, nil); err == nil {
		t.Error("an auth interceptor without credential sources was built")
	}
}

func TestStripIdentityHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{}
	h.Set("X-Flowgate-Tenant", "evil")
	h["x-flowgate-subject"] = []string{"raw-lowercase"}
	h.Set("X-Flowgate-Anything-Else", "x")
	h.Set("X-Flowgated", "kept")
	h.Set("Authorization", "kept")
	StripIdentityHeaders(h)
	if len(h) != 2 || h.Get("X-Flowgated") == "" || h.Get("Authorization") == "" {
		t.Errorf("after strip: %v", h)
	}
}

func TestMissingScope(t *testing.T) {
	id := Identity{Scopes: []string{"workflows:read", "agent:chat"}}
	for _, tc := range []struct {
		required, missing string
		ok                bool
	}{
		{"", "", true},
		{"agent:chat", "", true},
		{"agent:admin", "agent:admin", false},
		{"agent:chat workflows:read", "", true},
		{"agent:chat  workflows:write", "workflows:write", false},
		{"agent:chat\tworkflows:write", "workflows:write", false},
		{" agent:chat ", "", true},
		{"agent:chat\u00a0x", "x", false},
	} {
		missing, ok := id.MissingScope(tc.required)
		if ok != tc.ok || (!ok && missing != tc.missing) {
			t.Errorf("MissingScope(%q) = %q, %v; want %q, %v", tc.required, missing, ok, tc.missing, tc.ok)
		}
	}
}
