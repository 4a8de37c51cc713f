package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestConsoleRoutes: the console takes GET / and /console/ only; the
// gateway's other routes, and every other method on /, are as before; and
// NoConsole removes it.
func TestConsoleRoutes(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, on := startGateway(t, b.cfg)
	off := b.cfg
	off.NoConsole = true
	_, without := startGateway(t, off)
	get := func(method, url string) (int, string, string) {
		t.Helper()
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader("{}")
		}
		req, err := http.NewRequestWithContext(t.Context(), method, url, body)
		if err != nil {
			t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := http1Client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		got, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("Content-Type"), string(got)
	}
	for _, tc := range []struct {
		method, base, path string
		status             int
		contentType, has   string
	}{
		{http.MethodGet, on, "/", 200, "text/html", "Flowgate console"},
		{http.MethodGet, on, "/docs", 200, "text/html", "/openapi.json"},
		{http.MethodGet, on, "/openapi.json", 200, "application/json", `"openapi"`},
		{http.MethodGet, on, "/health", 200, "application/json", `"status"`},
		// Reaches the test backend, which does not implement it.
		{http.MethodGet, on, "/api/v1/workflow/deployments", 501, "application/json", `"NOT_IMPLEMENTED"`},
		{http.MethodPost, on, "/", 404, "application/json", `"NOT_FOUND"`},
		{http.MethodGet, on, "/index.html", 404, "application/json", `"NOT_FOUND"`},
		{http.MethodGet, on, "/console/missing.js", 404, "application/json", `"NOT_FOUND"`},
		{http.MethodGet, without, "/", 404, "application/json", `"NOT_FOUND"`},
		{http.MethodGet, without, "/console/", 404, "application/json", `"NOT_FOUND"`},
		{http.MethodGet, without, "/docs", 200, "text/html", "/openapi.json"},
	} {
		status, ctype, body := get(tc.method, tc.base+tc.path)
		if status != tc.status || !strings.HasPrefix(ctype, tc.contentType) || !strings.Contains(body, tc.has) {
			t.Errorf("%s %s (console %v): %d %q %.200s", tc.method, tc.path, tc.base == on, status, ctype, body)
		}
	}
}
