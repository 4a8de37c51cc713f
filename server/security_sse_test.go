package server

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flowgate/flowgate/interceptors"
)

// secSSEGet opens an SSE route and returns the status and the whole body (the
// recording agent ends its stream after two messages).
func secSSEGet(t *testing.T, rawURL string, h http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range h {
		req.Header[k] = v
	}
	res, err := http1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(data)
}

func TestSSECredentials(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	short := hsToken(t, jwt.MapClaims{"exp": time.Now().Add(2 * time.Minute).Unix(), "sub": "sse-user"})
	long := hsToken(t, jwt.MapClaims{"sub": "sse-user"})
	// cookie is what a browser sends: the cookie, the page's Origin when
	// cross-origin, and Sec-Fetch-Site (fetchSite "-" leaves it out, as old
	// browsers and non-browser clients do).
	cookie := func(tok, origin, fetchSite string) http.Header {
		h := http.Header{"Cookie": {defaultSSECookie + "=" + tok}}
		if origin != "" {
			h.Set("Origin", origin)
		}
		if fetchSite != "-" {
			h.Set("Sec-Fetch-Site", fetchSite)
		}
		return h
	}
	cases := []struct {
		name    string
		query   string
		header  http.Header
		status  int
		subject string
	}{
		{"short-lived query token", "&access_token=" + url.QueryEscape(short), nil, http.StatusOK, "sse-user"},
		{"long-lived query token", "&access_token=" + url.QueryEscape(long), nil, http.StatusUnauthorized, ""},
		{"forged query token", "&access_token=" + url.QueryEscape(short[:len(short)-4]+"AAAA"), nil, http.StatusUnauthorized, ""},
		{"cookie, same origin", "", cookie(long, "", "same-origin"), http.StatusOK, "sse-user"},
		{"cookie, typed URL", "", cookie(long, "", "none"), http.StatusOK, "sse-user"},
		{"cookie, allowed origin", "", cookie(long, "http://localhost:3000", "same-site"), http.StatusOK, "sse-user"},
		{"cookie, foreign origin", "", cookie(long, "https://evil.test", "cross-site"), http.StatusUnauthorized, ""},
		{"cookie, cross-site without Origin", "", cookie(long, "", "cross-site"), http.StatusUnauthorized, ""},
		{"cookie, same-site without Origin", "", cookie(long, "", "same-site"), http.StatusUnauthorized, ""},
		{"cookie, neither Origin nor Sec-Fetch-Site", "", cookie(long, "", "-"), http.StatusUnauthorized, ""},
		{"cookie, Origin null", "", cookie(long, "null", "cross-site"), http.StatusUnauthorized, ""},
		{"header wins over cookie", "", func() http.Header {
			h := cookie("garbage", "", "-")
			h.Set("Authorization", "Bearer "+long)
			return h
		}(), http.StatusOK, "sse-user"},
		{"no credentials", "", nil, http.StatusUnauthorized, ""},
		{"spoofed identity header", "", http.Header{"X-Flowgate-Subject": {"root"}, "X-Flowgate-Scopes": {"agent:chat"}}, http.StatusUnauthorized, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			session := marker("sse", tc.name)
			status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id="+url.QueryEscape(session)+"&user_message=hi"+tc.query, tc.header)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %.300s", status, tc.status, body)
			}
			seen := f.rec.find(session)
			if tc.status != http.StatusOK {
				if !strings.Contains(body, `"UNAUTHORIZED"`) {
					t.Errorf("error body not in the contract's shape: %.300s", body)
				}
				if strings.HasPrefix(tc.name, "cookie") && !strings.Contains(body, "cookie credentials are accepted only from") {
					t.Errorf("refusal does not say why: %.300s", body)
				}
				if len(seen) != 0 {
					t.Error("the backend saw a refused stream")
				}
				return
			}
			if !strings.Contains(body, `"content":"`+tc.subject+`"`) {
				t.Errorf("stream did not carry the verified subject: %.300s", body)
			}
			if len(seen) != 1 {
				t.Fatalf("backend saw %d streams", len(seen))
			}
			// Compared by signature: every HS256 token, the gateway's own
			// backend token among them, begins with the same header.
			for name, vals := range seen[0].header {
				for _, v := range vals {
					if strings.Contains(v, short[len(short)-20:]) || strings.Contains(v, long[len(long)-20:]) {
						t.Errorf("the token reached the backend in %s", name)
					}
				}
			}
			if seen[0].header.Get(interceptors.HeaderSubject) != tc.subject {
				t.Errorf("backend subject %q", seen[0].header.Get(interceptors.HeaderSubject))
			}
		})
	}
}

// TestSSEAPIKey: services read streams with an API key header too.
func TestSSEAPIKey(t *testing.T) {
	t.Parallel()
	const chatKey = "chat-key-0123456789abcdef"
	f := newSecFixture(t, func(c *Config) {
		c.Security.APIKeys = `[{"sha256":"` + interceptors.HashAPIKey(testAPIKey) + `","subject":"svc","tenant":"ops","scopes":["workflows:read"]},` +
			`{"sha256":"` + interceptors.HashAPIKey(chatKey) + `","subject":"chat-svc","tenant":"ops","scopes":["agent:chat"]}]`
	})
	for _, tc := range []struct {
		key    string
		status int
		want   string
	}{
		{chatKey, http.StatusOK, `"content":"chat-svc"`},
		{testAPIKey, http.StatusForbidden, `"FORBIDDEN"`},
		{"not-a-key", http.StatusUnauthorized, `"UNAUTHORIZED"`},
	} {
		session := marker("sse-key", tc.key)
		status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id="+session+"&user_message=hi", http.Header{interceptors.HeaderAPIKey: {tc.key}})
		if status != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("key %q: %d %.300s, want %d with %s", tc.key, status, body, tc.status, tc.want)
		}
		if seen := f.rec.find(session); (len(seen) == 1) != (tc.status == http.StatusOK) {
			t.Errorf("key %q: the backend saw %d streams", tc.key, len(seen))
		} else if len(seen) == 1 && seen[0].header.Get(interceptors.HeaderAPIKey) != "" {
			t.Errorf("key %q: the key reached the backend", tc.key)
		}
	}
}

// TestQueryTokenOnlyForStreams: outside the SSE routes an access_token
// parameter is removed and never honoured.
func TestQueryTokenOnlyForStreams(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	short := hsToken(t, jwt.MapClaims{"exp": time.Now().Add(time.Minute).Unix()})
	res := doREST(t, http.MethodGet, f.url+"/api/v1/workflow/deployments?status=marker-q&access_token="+short, nil, nil)
	if res.status != http.StatusUnauthorized {
		t.Errorf("status %d, want 401", res.status)
	}
	if len(f.rec.find("marker-q")) != 0 {
		t.Error("the backend saw the call")
	}
	// With a header credential the call works and the parameter does not
	// leak into the request the transcoder maps (it would be an unknown
	// field otherwise).
	res = doREST(t, http.MethodGet, f.url+"/api/v1/workflow/deployments?status=marker-q&access_token=x", nil, bearer(hsToken(t, nil)))
	if res.status != http.StatusOK {
		t.Errorf("status %d: %s", res.status, res.body)
	}
}

func TestTakeQueryToken(t *testing.T) {
	t.Parallel()
	r, _ := http.NewRequest(http.MethodGet, "http://gw/api/v1/chat/stream?session_id=a&access_token=tok&b=c", nil)
	r.RequestURI = r.URL.RequestURI()
	tok, ok := takeQueryToken(r)
	if !ok || tok != "tok" {
		t.Fatalf("token %q %v", tok, ok)
	}
	if strings.Contains(r.URL.String(), "tok") || strings.Contains(r.RequestURI, "access_token") {
		t.Errorf("token left in the URL: %s %s", r.URL, r.RequestURI)
	}
	w, _ := http.NewRequest(http.MethodPost, "http://gw/api/v1/webhooks/x?access_token=sender-owned", nil)
	if _, ok := takeQueryToken(w); ok || !strings.Contains(w.URL.RawQuery, "sender-owned") {
		t.Error("a webhook's own query was altered")
	}
}

// TestSSECookieWithWildcardCORS: a "*" origin policy never lets a
// cross-origin page ride on the cookie.
func TestSSECookieWithWildcardCORS(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, func(c *Config) { c.Security.AllowedOrigins = []string{"*"} })
	tok := hsToken(t, jwt.MapClaims{"sub": "w"})
	h := http.Header{"Cookie": {defaultSSECookie + "=" + tok}, "Origin": {"https://evil.test"}}
	if status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id=wild&user_message=x", h); status != http.StatusUnauthorized {
		t.Errorf("cross-origin cookie under a wildcard policy: %d %.200s", status, body)
	}
	h.Del("Origin")
	h.Set("Sec-Fetch-Site", "same-origin")
	if status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id=wild2&user_message=x", h); status != http.StatusOK {
		t.Errorf("same-origin cookie: %d %.200s", status, body)
	}
}

// TestSSECookieAPIKey: a cookie that holds no JWT is taken as an API key,
// as the console stores one: a known key authenticates (here without the
// scope to chat, so 403), an unknown one does not.
func TestSSECookieAPIKey(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	for _, tc := range []struct {
		key    string
		status int
		words  string
	}{
		{testAPIKey, http.StatusForbidden, `"FORBIDDEN"`},
		{"not-a-known-key", http.StatusUnauthorized, "invalid API key"},
	} {
		h := http.Header{"Cookie": {defaultSSECookie + "=" + tc.key}, "Sec-Fetch-Site": {"same-origin"}}
		status, body := secSSEGet(t, f.url+"/api/v1/chat/stream?session_id=s&user_message=hi", h)
		if status != tc.status || !strings.Contains(body, tc.words) {
			t.Errorf("cookie %q: status %d, want %d with %s: %.300s", tc.key, status, tc.status, tc.words, body)
		}
	}
	for v, want := range map[string]bool{"a.b.c": true, "eyJh.eyJz.": true, "a.b": false, "a..c": false, "a b.c.d": false, "k3y-with.dots.and+plus": false} {
		if compactJWT(v) != want {
			t.Errorf("compactJWT(%q) = %v", v, !want)
		}
	}
}
