package server

import "net/http"

// getCacheControl is the caching a GET answer of an RPC route (a REST read
// or a Connect GET) carries unless its upstream set one. The answers are
// the caller's own data (tenant-scoped, behind credentials) and change as
// executions run: private keeps them out of shared caches, no-cache makes a
// browser that keeps one ask again before using it.
const getCacheControl = "private, no-cache"

// cacheGET sets the caching of GET answers, and of HEAD's, which are
// GET's headers; the other methods' answers are not cacheable by HTTP's
// rules and are left alone.
func cacheGET(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(&cachingWriter{ResponseWriter: w}, r)
	})
}

// cachingWriter adds the default Cache-Control and Vary as the headers go
// out.
type cachingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (c *cachingWriter) WriteHeader(code int) {
	if !c.wrote {
		c.wrote = true
		h := c.Header()
		if h.Get("Cache-Control") == "" {
			h.Set("Cache-Control", getCacheControl)
		}
		// A browser cache must not hand one caller's answer to another
		// signed in on the same browser.
		h.Add("Vary", "Authorization, Cookie, X-Api-Key")
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *cachingWriter) Write(b []byte) (int, error) {
	if !c.wrote {
		c.WriteHeader(http.StatusOK)
	}
	return c.ResponseWriter.Write(b)
}

func (c *cachingWriter) Flush() {
	if !c.wrote {
		c.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(c.ResponseWriter).Flush() //nolint:errcheck // as http.Flusher
}

func (c *cachingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
