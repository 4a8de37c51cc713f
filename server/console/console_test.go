package console

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func serve(t *testing.T, h http.Handler, method, path string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func newConsole(t *testing.T) *Console {
	t.Helper()
	c, err := New(Config{SSECookie: `sid"><script>`})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPage(t *testing.T) {
	t.Parallel()
	c := newConsole(t)
	res := serve(t, c.Page(), http.MethodGet, "/", nil)
	body := res.Body.String()
	if res.Code != http.StatusOK || res.Header().Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("page: %d %q", res.Code, res.Header().Get("Content-Type"))
	}
	if !strings.Contains(body, `content="sid&#34;&gt;&lt;script&gt;"`) {
		t.Errorf("the cookie name is not in the page, escaped: %s", body)
	}
	csp := res.Header().Get("Content-Security-Policy")
	for _, want := range []string{"script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q allows unsafe sources", csp)
	}
	if res.Header().Get("Cache-Control") != "no-cache" || res.Header().Get("ETag") == "" || res.Header().Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("page headers: %v", res.Header())
	}
	again := serve(t, c.Page(), http.MethodGet, "/", http.Header{"If-None-Match": {res.Header().Get("ETag")}})
	if again.Code != http.StatusNotModified || again.Body.Len() != 0 {
		t.Errorf("revalidation: %d with %d bytes", again.Code, again.Body.Len())
	}
	head := serve(t, c.Page(), http.MethodHead, "/", nil)
	if head.Code != http.StatusOK || head.Body.Len() != 0 {
		t.Errorf("HEAD: %d with %d bytes", head.Code, head.Body.Len())
	}
	post := serve(t, c.Page(), http.MethodPost, "/", nil)
	if post.Code != http.StatusMethodNotAllowed || !strings.Contains(post.Body.String(), `"METHOD_NOT_ALLOWED"`) {
		t.Errorf("POST: %d %s", post.Code, post.Body.String())
	}
}

// TestPageHasNothingInline: the CSP forbids inline scripts, styles and
// handlers, so the built page must not need any.
func TestPageHasNothingInline(t *testing.T) {
	t.Parallel()
	res := serve(t, newConsole(t).Page(), http.MethodGet, "/", nil)
	body := res.Body.String()
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`), // a script with content
		regexp.MustCompile(`<style`),
		regexp.MustCompile(`\sstyle=`),
		regexp.MustCompile(`\son[a-z]+=`),
		regexp.MustCompile(`(?:src|href)="(?:https?:)?//`), // a third-party asset
	} {
		if loc := bad.FindStringIndex(body); loc != nil {
			t.Errorf("the page has %q", body[loc[0]:min(len(body), loc[1]+20)])
		}
	}
}

func TestAssets(t *testing.T) {
	t.Parallel()
	c := newConsole(t)
	page := serve(t, c.Page(), http.MethodGet, "/", nil).Body.String()
	refs := regexp.MustCompile(`"(/console/[^"]+)"`).FindAllStringSubmatch(page, -1)
	types := map[string]string{".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
	if len(refs) != 3 {
		t.Fatalf("the page names %d assets, want a script, a stylesheet and an icon", len(refs))
	}
	for _, ref := range refs {
		path := ref[1]
		if !regexp.MustCompile(`-[A-Za-z0-9]{8,}\.[a-z]+$`).MatchString(path) {
			t.Errorf("%s has no content hash in its name", path)
		}
		res := serve(t, c.Assets(), http.MethodGet, path, nil)
		ext := path[strings.LastIndex(path, "."):]
		if res.Code != http.StatusOK || res.Header().Get("Content-Type") != types[ext] || res.Body.Len() == 0 {
			t.Errorf("%s: %d %q, %d bytes", path, res.Code, res.Header().Get("Content-Type"), res.Body.Len())
		}
		if res.Header().Get("Cache-Control") != "public, max-age=31536000, immutable" || res.Header().Get("Content-Security-Policy") == "" {
			t.Errorf("%s headers: %v", path, res.Header())
		}
	}
	res := serve(t, c.Assets(), http.MethodGet, "/console/nope.js", nil)
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(res.Body.Bytes(), &e); err != nil || res.Code != http.StatusNotFound || e.Error.Code != "NOT_FOUND" {
		t.Errorf("unknown asset: %d %s", res.Code, res.Body.String())
	}
}

func TestGzip(t *testing.T) {
	t.Parallel()
	c := newConsole(t)
	plain := serve(t, c.Page(), http.MethodGet, "/", nil)
	zipped := serve(t, c.Page(), http.MethodGet, "/", http.Header{"Accept-Encoding": {"gzip, deflate, br"}})
	refused := serve(t, c.Page(), http.MethodGet, "/", http.Header{"Accept-Encoding": {"gzip;q=0"}})
	if plain.Header().Get("Content-Encoding") != "" || refused.Header().Get("Content-Encoding") != "" {
		t.Error("gzip sent to a client that does not accept it")
	}
	if zipped.Header().Get("Content-Encoding") != "gzip" || zipped.Body.Len() >= plain.Body.Len() {
		t.Fatalf("gzip: %q, %d bytes against %d", zipped.Header().Get("Content-Encoding"), zipped.Body.Len(), plain.Body.Len())
	}
	zr, err := gzip.NewReader(zipped.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(zr)
	if !bytes.Equal(got, plain.Body.Bytes()) {
		t.Error("the gzipped page is not the page")
	}
	if zipped.Header().Get("ETag") == plain.Header().Get("ETag") || zipped.Header().Get("Vary") != "Accept-Encoding" {
		t.Errorf("representations: ETags %q and %q, Vary %q", zipped.Header().Get("ETag"), plain.Header().Get("ETag"), zipped.Header().Get("Vary"))
	}
	for ae, want := range map[string]string{
		"gzip;q=0.0":          "",
		"br, gzip; Q=0.000":   "",
		"gzip;q=0.5, br;q=1":  "gzip",
		"deflate, GZIP ; q=1": "gzip",
	} {
		res := serve(t, c.Page(), http.MethodGet, "/", http.Header{"Accept-Encoding": {ae}})
		if got := res.Header().Get("Content-Encoding"); got != want {
			t.Errorf("Accept-Encoding %q: Content-Encoding %q, want %q", ae, got, want)
		}
	}
}
