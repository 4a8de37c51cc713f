package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/internal/apierr"
)

// accessTokenParam is the query parameter EventSource callers may put a
// short-lived token in, since they cannot send headers.
const accessTokenParam = "access_token"

// wrapHTTP is the outermost security layer. In order: CORS (preflights are
// answered here, before any route or the transcoder); removal of every
// client-sent gateway-owned header (X-Flowgate-*), so no path can smuggle
// an identity; removal of the access_token query parameter from the URL,
// so it is never logged, transcoded or forwarded; the caller's address;
// the write and body read timeouts; the body limit; and the inflation of
// compressed bodies within that limit.
// edge is what every call gets before any policy looks at it, on either
// server: the identity headers only the gateway may set are removed, and
// the caller's address is resolved when rate limits need it.
func (s *security) edge(ctx context.Context, remoteAddr string, header http.Header) context.Context {
	interceptors.StripIdentityHeaders(header)
	if s.needClientIP {
		// Indexed rather than header.Values, which checks the name's case
		// on every call.
		ctx = interceptors.WithClientIP(ctx, s.proxies.ClientIP(remoteAddr, header["X-Forwarded-For"]))
	}
	return ctx
}

func (s *security) wrapHTTP(next http.Handler) http.Handler {
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := s.edge(r.Context(), r.RemoteAddr, r.Header)
		if token, ok := takeQueryToken(r); ok {
			ctx = context.WithValue(ctx, queryTokenKey{}, token)
		}
		if ctx != r.Context() {
			r = r.WithContext(ctx)
		}
		if err := checkRESTText(r); err != nil {
			s.errs.write(w, r, err)
			return
		}
		call := new(edgeCall)
		w = s.timeWrites(call, w, r)
		r = s.timeBody(call, w, r)
		r, ok := s.limitBody(call, w, r)
		if !ok {
			return
		}
		if r, ok = s.inflateRequest(w, r); !ok {
			return
		}
		next.ServeHTTP(w, r)
	})
	return s.cors.Handler(inner)
}

type queryTokenKey struct{}

// edgeCall is what the edge and the REST layer keep for one request, in
// one allocation where each used to take its own: the timed writer, the
// timed body, the body as read, and the REST layer's writer.
type edgeCall struct {
	stall stallWriter
	body  timedBody
	read  bufferedBody
	limit io.LimitedReader
	rest  restWriter
	// restTaken is set once the REST layer has its writer.
	restTaken bool
}

// restWriterOf returns the storage for a REST writer on w: that of the
// request's edgeCall when w is the edge's writer, else a new one.
func restWriterOf(w http.ResponseWriter) *restWriter {
	if sw, ok := w.(*stallWriter); ok && sw.call != nil && !sw.call.restTaken {
		sw.call.restTaken = true
		return &sw.call.rest
	}
	return new(restWriter)
}

// checkRESTText refuses REST and SSE requests whose path or query decode to
// invalid UTF-8: they map onto proto string fields (a webhook's query onto
// a string map), which cannot hold it, and must get a 400 rather than fail
// deep inside the transcoder.
func checkRESTText(r *http.Request) error {
	if isRPCRequest(r) {
		return nil
	}
	if !utf8.ValidString(r.URL.Path) {
		return badRequest("path", "not valid UTF-8")
	}
	if strings.HasPrefix(r.URL.Path, webhookPrefix) && hasDotSegment(r.URL.Path) {
		return badRequest("path", "must not have '.' or '..' segments")
	}
	if r.URL.RawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	// A webhook's query belongs to its sender and is passed on as sent;
	// elsewhere a query that does not parse cannot be mapped.
	if err != nil && !strings.HasPrefix(r.URL.Path, webhookPrefix) {
		return badRequest("query", "malformed query string")
	}
	for k, vals := range q {
		if !utf8.ValidString(k) {
			return badRequest("query", "not valid UTF-8")
		}
		for _, v := range vals {
			if !utf8.ValidString(v) {
				return badRequest(k, "not valid UTF-8")
			}
		}
	}
	return nil
}

// hasDotSegment reports a "." or ".." segment in a decoded path: the mux
// would redirect it elsewhere, and a webhook must run at the path its
// sender addressed or not at all.
func hasDotSegment(path string) bool {
	path += "/"
	return strings.Contains(path, "/./") || strings.Contains(path, "/../")
}

func badRequest(field, reason string) error {
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid %s: %s", field, reason))
	if d, derr := connect.NewErrorDetail(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{
		Field: field, Description: reason,
	}}}); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// takeQueryToken removes access_token from r's URL in place and returns
// it. Webhook URLs are left alone: their query belongs to the sender.
func takeQueryToken(r *http.Request) (string, bool) {
	if !strings.Contains(r.URL.RawQuery, accessTokenParam) || strings.HasPrefix(r.URL.Path, webhookPrefix) {
		return "", false
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil || !q.Has(accessTokenParam) {
		return "", false
	}
	token := q.Get(accessTokenParam)
	q.Del(accessTokenParam)
	u := *r.URL
	u.RawQuery = q.Encode()
	r.URL = &u
	r.RequestURI = u.RequestURI()
	return token, token != ""
}

// limitBody refuses bodies over the limit: at once when Content-Length says
// so; REST bodies by reading them now (the transcoder buffers them whole
// anyway), so that the caller gets the contract's 413 or 408 rather than
// whatever the transcoder makes of a failed read; RPC bodies of unknown
// length through http.MaxBytesReader, which connect turns into the
// protocol's ResourceExhausted error.
func (s *security) limitBody(call *edgeCall, w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	limit := s.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		s.tooLarge(w, r)
		return r, false
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return r, true
	}
	if b, ok := r.Body.(*bufferedBody); ok && b.Len() == len(b.data) {
		return r, true // read whole by the HTTP/1.1 loop, within the limit checked above
	}
	if isRPCRequest(r) {
		// Within a declared length the server stops the body there
		// (HTTP/1.1) or resets a stream that sends more (HTTP/2).
		if r.ContentLength < 0 {
			r.Body = overLimitWords{http.MaxBytesReader(w, r.Body, limit), limit}
		}
		return r, true
	}
	call.limit = io.LimitedReader{R: r.Body, N: limit + 1}
	data, err := readAll(&call.limit, r.ContentLength)
	if err == nil && int64(len(data)) > limit {
		err = &http.MaxBytesError{Limit: limit}
	}
	if err != nil {
		s.bodyFailed(w, r, err, "could not read the request body")
		return r, false
	}
	call.read.set(data)
	r.Body = &call.read
	r.ContentLength = int64(len(data))
	return r, true
}

// readAll is io.ReadAll, starting with room for a small body of the
// declared length and its EOF rather than 512 bytes. Memory grows with
// what arrives, not with what Content-Length promises: a caller that
// declares a large body and sends nothing costs nothing.
func readAll(r io.Reader, declared int64) ([]byte, error) {
	size := int64(512)
	if declared >= 0 && declared < size {
		size = declared + 1
	}
	b := make([]byte, 0, size)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}

// bodyFailed answers a request whose body could not be read: too large,
// too slow, or (with fallback as the message) broken.
func (s *security) bodyFailed(w http.ResponseWriter, r *http.Request, err error, fallback string) {
	var maxErr *http.MaxBytesError
	switch {
	case errors.Is(err, errInflatedTooLarge):
		s.tooLargeMessage(w, r, fmt.Sprintf("request body exceeds %d bytes once decompressed", s.cfg.MaxBodyBytes))
	case errors.As(err, &maxErr):
		s.tooLarge(w, r)
	case errors.Is(err, errBodyTimeout):
		s.bodyTimedOut(w, r, err)
	default:
		w.Header().Set("Connection", "close")
		s.errs.write(w, r, connect.NewError(connect.CodeInvalidArgument, errors.New(fallback)))
	}
}

func (s *security) tooLarge(w http.ResponseWriter, r *http.Request) {
	s.tooLargeMessage(w, r, fmt.Sprintf("request body exceeds %d bytes", s.cfg.MaxBodyBytes))
}

func (s *security) tooLargeMessage(w http.ResponseWriter, r *http.Request, msg string) {
	// The rest of the body is not read: the connection cannot be reused.
	w.Header().Set("Connection", "close")
	if isRPCRequest(r) {
		_ = s.errs.rpc.Write(w, r, apierr.TooLarge(errors.New(msg)))
		return
	}
	writeRESTStatus(w, http.StatusRequestEntityTooLarge, msg)
}

// wrapSSE lets the SSE routes accept the credentials a browser's
// EventSource can send: a short-lived token in the access_token query
// parameter (already taken out of the URL by wrapHTTP), or a cookie with a
// token or an API key. Either becomes the Authorization (or X-API-Key)
// header of the inner call, where the interceptors verify it like any
// other. Headers, when sent, win.
func (s *security) wrapSSE(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, fromQuery := r.Context().Value(queryTokenKey{}).(string)
		if !fromQuery {
			token, fromQuery = takeQueryToken(r)
		}
		if !s.auth.Enabled() || r.Header.Get("Authorization") != "" || r.Header.Get(interceptors.HeaderAPIKey) != "" {
			next.ServeHTTP(w, r)
			return
		}
		if fromQuery {
			if err := s.checkQueryToken(token); err != nil {
				s.refuseCredentials(w, r, err)
				return
			}
		} else {
			c, err := r.Cookie(s.cfg.SSECookie)
			if err != nil || c.Value == "" {
				next.ServeHTTP(w, r) // no credentials: the interceptor answers
				return
			}
			if !s.cookieAllowed(r) {
				s.refuseCredentials(w, r, connect.NewError(connect.CodeUnauthenticated, errors.New(
					"cookie credentials are accepted only from the gateway's own pages or an allowed origin; send a token instead")))
				return
			}
			token = c.Value
		}
		r = r.Clone(r.Context())
		if !fromQuery && !compactJWT(token) {
			// The console keeps an API key in the cookie when that is
			// what its user signed in with.
			r.Header.Set(interceptors.HeaderAPIKey, token)
		} else {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		next.ServeHTTP(w, r)
	})
}

// compactJWT reports whether a cookie holds a JWT (three dot-separated
// base64url parts) rather than an API key.
func compactJWT(v string) bool {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return false
	}
	const base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	for i, p := range parts {
		if (p == "" && i < 2) || strings.Trim(p, base64url) != "" {
			return false
		}
	}
	return true
}

func (s *security) refuseCredentials(w http.ResponseWriter, r *http.Request, err error) {
	if s.authFailed != nil {
		s.authFailed()
	}
	s.errs.write(w, r, err)
}

// cookieAllowed reports whether a browser sent the request from a page
// trusted with the cookie: the gateway's own (Sec-Fetch-Site same-origin,
// or none for a typed URL or bookmark) or a listed origin. Browsers attach
// cookies to cross-site requests too, and opening a chat stream runs a
// turn, so a request that says neither where it comes from is refused as
// well. A "*" policy lists nobody in particular.
func (s *security) cookieAllowed(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	}
	return r.Header.Get("Origin") != "" && !s.corsWildcard && s.cors.OriginAllowed(r)
}

// checkQueryToken refuses long-lived tokens in URLs: URLs end up in
// browser history and proxy logs, so a token there must expire soon. The
// signature is checked later, with every other claim.
func (s *security) checkQueryToken(token string) error {
	exp, err := interceptors.UnverifiedExpiry(token)
	if err != nil {
		return connect.NewError(connect.CodeUnauthenticated, errors.New("invalid access_token"))
	}
	if time.Until(exp) > s.cfg.SSEQueryTokenMaxTTL {
		return connect.NewError(connect.CodeUnauthenticated,
			fmt.Errorf("access_token must expire within %s; use a short-lived token", s.cfg.SSEQueryTokenMaxTTL))
	}
	return nil
}

// newCORS builds the CORS policy: Connect's and gRPC-Web's headers plus
// the REST verbs and the gateway's own headers. Credentials are allowed
// only with an explicit origin list, never with "*".
func newCORS(origins []string, logger *slog.Logger) (*cors.Cors, bool, error) {
	wildcard := false
	clean := make([]string, 0, len(origins))
	for _, o := range origins {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if o == "*" {
			wildcard = true
			continue
		}
		if err := validOrigin(o); err != nil {
			return nil, false, err
		}
		clean = append(clean, strings.ToLower(strings.TrimSuffix(o, "/")))
	}
	if wildcard {
		logger.Warn("CORS allows any origin; credentials (cookies) are not allowed cross-origin")
		clean = []string{"*"}
	}
	return cors.New(cors.Options{
		AllowedOrigins: clean,
		AllowedMethods: union(connectcors.AllowedMethods(),
			http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete),
		AllowedHeaders: union(connectcors.AllowedHeaders(),
			"Authorization", interceptors.HeaderAPIKey, "X-Request-Id", "Traceparent", "Tracestate",
			"Idempotency-Key", "Last-Event-Id", "Accept"),
		ExposedHeaders: union(connectcors.ExposedHeaders(),
			"Retry-After", "X-Request-Id", "Www-Authenticate", "Location"),
		AllowCredentials: !wildcard,
		MaxAge:           7200,
	}), wildcard, nil
}

func validOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil ||
		strings.Count(u.Host, "*") > 1 {
		return fmt.Errorf("allowed origin %q must look like https://host[:port] (one * wildcard allowed in host)", o)
	}
	return nil
}

func union(base []string, more ...string) []string {
	out := slices.Clone(base)
	for _, m := range more {
		if !slices.ContainsFunc(out, func(s string) bool { return strings.EqualFold(s, m) }) {
			out = append(out, m)
		}
	}
	return out
}

// overLimitWords words the error of a body read past the limit as the
// gateway does elsewhere; the RPC handlers quote it.
type overLimitWords struct {
	io.ReadCloser
	limit int64
}

func (b overLimitWords) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		err = fmt.Errorf("request body exceeds %d bytes", b.limit)
	}
	return n, err
}
