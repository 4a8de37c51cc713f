// Package console serves the web console, the single page built from web/
// into dist/ (by `node web/build.mjs`) and embedded in the binary: the page
// at "/" and its assets under [AssetPrefix].
//
// The page is revalidated on every load (ETag), so that a new gateway's
// console is picked up at once; the assets have content hashes in their
// names and are cached for a year. Every response carries a
// Content-Security-Policy that allows scripts, styles and connections to
// the gateway's own origin only, with nothing inline.
package console

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/flowgate/flowgate/internal/apierr"
)

// AssetPrefix is the path the console's scripts, styles and icon are
// served under.
const AssetPrefix = "/console/"

// contentSecurityPolicy keeps the page to its own origin: no inline
// script or style (the build emits none), no framing, no plugins, and
// calls (Connect and EventSource) to the gateway only.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

//go:embed dist
var dist embed.FS

// Config is what the console page needs to know of the gateway.
type Config struct {
	// SSECookie is the cookie the gateway's SSE routes read credentials
	// from; the page writes the signed-in credential there, because
	// EventSource cannot send headers.
	SSECookie string
}

// Console serves the console's page and assets.
type Console struct {
	page   file
	assets map[string]file
}

type file struct {
	body        []byte
	contentType string
	etag        string
	immutable   bool
	// gzipped is body compressed once at start-up, for browsers that
	// accept it (all do): the script shrinks to about a third.
	gzipped []byte
}

// New loads the embedded build and fills in the page's settings.
func New(cfg Config) (*Console, error) {
	c := &Console{assets: map[string]file{}}
	entries, err := fs.ReadDir(dist, "dist")
	if err != nil {
		return nil, fmt.Errorf("could not read the embedded console: %w", err)
	}
	for _, e := range entries {
		body, err := fs.ReadFile(dist, "dist/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("could not read the embedded console file %q: %w", e.Name(), err)
		}
		if e.Name() == "index.html" {
			body = []byte(strings.ReplaceAll(string(body), "{{SSE_COOKIE}}", html.EscapeString(cfg.SSECookie)))
			c.page = newFile(body, "text/html; charset=utf-8", false)
			continue
		}
		ctype := mime.TypeByExtension(path.Ext(e.Name()))
		if ctype == "" {
			ctype = "application/octet-stream"
		}
		c.assets[e.Name()] = newFile(body, ctype, true)
	}
	if c.page.body == nil {
		return nil, errors.New("the embedded console has no index.html: run `node web/build.mjs`")
	}
	return c, nil
}

func newFile(body []byte, contentType string, immutable bool) file {
	sum := sha256.Sum256(body)
	f := file{body: body, contentType: contentType, etag: hex.EncodeToString(sum[:12]), immutable: immutable}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(body)
	if zw.Close() == nil && buf.Len() < len(body) {
		f.gzipped = buf.Bytes()
	}
	return f
}

// acceptsGzip reads Accept-Encoding loosely: browsers send "gzip" without
// weights, and a client that refuses it with a zero weight ("gzip;q=0",
// "gzip; q=0.000") gets the plain body.
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		key, weight, _ := strings.Cut(strings.TrimSpace(params), "=")
		if !strings.EqualFold(strings.TrimSpace(key), "q") {
			return true
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(weight), 64)
		return err != nil || q > 0
	}
	return false
}

// Page serves the console's HTML page.
func (c *Console) Page() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { c.serve(w, r, c.page, true) })
}

// Assets serves the files under [AssetPrefix].
func (c *Console) Assets() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := c.assets[strings.TrimPrefix(r.URL.Path, AssetPrefix)]
		c.serve(w, r, f, ok)
	})
}

func (c *Console) serve(w http.ResponseWriter, r *http.Request, f file, found bool) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		apierr.New(http.StatusMethodNotAllowed, "use GET").Write(w)
		return
	}
	if !found {
		apierr.New(http.StatusNotFound, "no console file "+r.URL.Path).Write(w)
		return
	}
	body, etag := f.body, f.etag
	if f.gzipped != nil {
		h.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r) {
			body, etag = f.gzipped, etag+"-gz"
			h.Set("Content-Encoding", "gzip")
		}
	}
	h.Set("ETag", `"`+etag+`"`)
	if f.immutable {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	// http.ServeContent answers If-None-Match with 304 and HEAD without a
	// body; the zero modification time leaves Last-Modified out.
	h.Set("Content-Type", f.contentType)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}
