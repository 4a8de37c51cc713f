package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzRESTMapping throws arbitrary REST methods, paths, query strings and
// bodies at the gateway (authenticated, so mapping reaches the backends):
// it must never panic or answer 500, and every error must be in the
// contract's shape.
func FuzzRESTMapping(f *testing.F) {
	fx := newSecFixture(f, nil)
	handler := fx.gw.Handler()
	auth := "Bearer " + hsToken(f, nil)
	seeds := []struct {
		method      uint8
		path, query string
		body        string
	}{
		{0, "workflow/deployments", "page=1&page_size=2", ""},
		{0, "workflow/deployments", "page=abc", ""},
		{0, "workflow/deployments", "page=99999999999999999999", ""},
		{0, "workflow/deployments", "status=%00&status=x", ""},
		{0, "workflow/deployments", "unknown_field=1", ""},
		{0, "workflow/deployments", "page_token=%ff%fe", ""},
		{0, "workflow/deployments/abc", "", ""},
		{0, "workflow/deployments/%2e%2e/%2e%2e/health", "", ""},
		{0, "workflow/deployments/a%2Fb", "", ""},
		{2, "workflow/deployments/abc", "", `{"name":"x"}`},
		{2, "workflow/deployments/abc", "deployment_id=other", `{"deployment_id":"y"}`},
		{3, "workflow/deployments/abc", "", ""},
		{1, "workflow/deployments/abc/run", "", `{"trigger_data":[1,2]}`},
		{1, "workflow/execute", "", `{"workflow_definition":{"name":"f"}}`},
		{1, "workflow/execute", "", `{"workflow_definition":{"nodes":"not a list"}}`},
		{1, "workflow/execute", "", `{"no_such_field":true}`},
		{1, "workflow/execute", "", `{`},
		{1, "session", "", `{"action":"create"}`},
		{0, "executions", "page=-1&page_size=0", ""},
		{0, "executions/x", "execution_id=y", ""},
		{1, "webhooks/orders/new", "a=1&b=%zz", `{"any":"body"}`},
		{1, "webhooks/", "", ``},
		{0, "chat/stream", "session_id=s&user_message=hi", ""},
		{0, "chat/stream", "session_id=%00", ""},
		{4, "workflow/deployments", "", `{}`},
		{0, "health", "", ""},
		{0, "//double//slashes", "", ""},
		{0, "workflow/deployments/{deployment_id}", "", ""},
	}
	for _, s := range seeds {
		f.Add(s.method, s.path, s.query, s.body)
	}
	methods := []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch}
	f.Fuzz(func(t *testing.T, method uint8, path, query, body string) {
		u := &url.URL{Path: "/api/v1/" + strings.TrimLeft(path, "/"), RawQuery: query}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(ctx)
		req.Method = methods[int(method)%len(methods)]
		req.URL = u
		req.RequestURI = u.RequestURI()
		req.Body = io.NopCloser(strings.NewReader(body))
		req.ContentLength = int64(len(body))
		req.Header.Set("Authorization", auth)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		if rec.Code == http.StatusInternalServerError || rec.Code < 100 || rec.Code > 599 {
			t.Fatalf("%s %s: status %d: %s", req.Method, req.RequestURI, rec.Code, rec.Body.String())
		}
		if rec.Code >= 400 && !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/event-stream") {
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" {
				t.Fatalf("%s %s: %d error not in the contract's shape: %q", req.Method, req.RequestURI, rec.Code, rec.Body.String())
			}
		}
	})
}
