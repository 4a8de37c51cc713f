package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

var httpParams = map[string]bool{
	"url": true, "method": false, "headers": false, "query": false, "body": false,
	"timeout": false, "max_response_bytes": false, "fail_on_status": false, "retry": false,
}

var httpMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
}

// httpNode calls an HTTP endpoint. Output: {status_code, headers, body},
// the body parsed as JSON when the response says it is JSON.
type httpNode struct {
	method       string
	url          template
	headers      mapTemplate
	query        mapTemplate
	body         template
	timeout      time.Duration
	maxBytes     int64
	failOnStatus bool
	retry        *retryPolicy // nil: one attempt
}

func compileHTTP(c *compiler, params map[string]any, field string) (executor, *fieldError) {
	n := &httpNode{method: http.MethodGet, timeout: c.httpTimeout, maxBytes: c.maxResponseBytes, failOnStatus: true}
	rawURL, ok := params["url"].(string)
	if !ok || strings.TrimSpace(rawURL) == "" {
		return nil, fieldErrorf(field+".url", "must be a non-empty string")
	}
	t, fe := compileTemplate(rawURL, field+".url", c.expr)
	if fe != nil {
		return nil, fe
	}
	if lit, isLit := t.(literal); isLit {
		if _, err := checkURL(lit.v.(string)); err != nil {
			return nil, fieldErrorf(field+".url", "%s", err.Error())
		}
	}
	n.url = t
	if fe := n.compileOptions(c, params, field); fe != nil {
		return nil, fe
	}
	return n, nil
}

func (n *httpNode) compileOptions(c *compiler, params map[string]any, field string) *fieldError {
	if v, ok := params["method"]; ok {
		m, _ := v.(string)
		m = strings.ToUpper(m)
		if !httpMethods[m] {
			return fieldErrorf(field+".method", "must be one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		}
		n.method = m
	}
	var fe *fieldError
	if v, ok := params["headers"]; ok {
		if n.headers, fe = compileHeaders(c, v, field+".headers"); fe != nil {
			return fe
		}
	}
	if v, ok := params["query"]; ok {
		obj, isObj := v.(map[string]any)
		if !isObj {
			return fieldErrorf(field+".query", "must be an object of parameter names to values")
		}
		t, fe := compileTemplate(obj, field+".query", c.expr)
		if fe != nil {
			return fe
		}
		n.query = t.(mapTemplate)
	}
	if v, ok := params["body"]; ok {
		if n.body, fe = compileTemplate(v, field+".body", c.expr); fe != nil {
			return fe
		}
	}
	if v, ok := params["timeout"]; ok {
		d, err := durationParam(v)
		if err != nil || d <= 0 || d > c.httpTimeout {
			return fieldErrorf(field+".timeout", "must be a duration more than 0 and at most %s", c.httpTimeout)
		}
		n.timeout = d
	}
	if v, ok := params["max_response_bytes"]; ok {
		size, err := intParam(v)
		if err != nil || size <= 0 || size > c.maxResponseBytes {
			return fieldErrorf(field+".max_response_bytes", "must be a whole number from 1 to %d", c.maxResponseBytes)
		}
		n.maxBytes = size
	}
	if v, ok := params["fail_on_status"]; ok {
		b, isBool := v.(bool)
		if !isBool {
			return fieldErrorf(field+".fail_on_status", "must be true or false")
		}
		n.failOnStatus = b
	}
	if v, ok := params["retry"]; ok {
		if n.retry, fe = compileRetry(v, field+".retry"); fe != nil {
			return fe
		}
	}
	return nil
}

func checkURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL", raw)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: only http and https URLs are allowed", raw)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%q has no host", raw)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%q: credentials in the URL are not allowed; use a header", raw)
	}
	return u, nil
}

func (n *httpNode) run(ctx context.Context, r *run, in *exprEnv) (outcome, error) {
	req, err := n.request(ctx, r, in)
	if err != nil {
		return outcome{}, err
	}
	for tries := 1; ; tries++ {
		a := n.try(ctx, r, req)
		if n.retry == nil {
			return outcome{output: outputOf(a)}, a.err
		}
		if a.out != nil {
			a.out["attempts"] = float64(tries)
		}
		wait, stop := n.retry.wait(ctx, tries, a)
		if wait == 0 {
			if a.err != nil && (tries > 1 || stop != "") {
				a.err = fmt.Errorf("%w (attempt %d of %d%s)", a.err, tries, n.retry.attempts, prefixed("; no retry: ", stop))
			}
			return outcome{output: outputOf(a)}, a.err
		}
		if err := sleep(ctx, wait); err != nil {
			return outcome{output: outputOf(a)}, err
		}
		if req, err = rewind(ctx, req); err != nil {
			return outcome{}, err
		}
	}
}

func outputOf(a attempt) any {
	if a.out == nil {
		return nil
	}
	return a.out
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

// rewind makes a copy of req that sends its body again.
func rewind(ctx context.Context, req *http.Request) (*http.Request, error) {
	next := req.Clone(ctx)
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return nil, fmt.Errorf("resending the body: %w", err)
		}
		next.Body = body
	}
	return next, nil
}

// try sends the request once, under the node's own timeout.
func (n *httpNode) try(ctx context.Context, r *run, req *http.Request) attempt {
	ctx, cancel := context.WithTimeout(ctx, n.timeout)
	defer cancel()
	resp, err := r.engine.httpClient.Do(req.WithContext(ctx))
	if err != nil {
		return attempt{err: describeHTTPError(ctx, err, n.timeout), transient: transientError(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, n.maxBytes+1))
	if err != nil {
		return attempt{err: describeHTTPError(ctx, err, n.timeout), transient: true}
	}
	if int64(len(data)) > n.maxBytes {
		return attempt{err: fmt.Errorf("response body is larger than %d bytes", n.maxBytes)}
	}
	a := attempt{out: map[string]any{
		"status_code": float64(resp.StatusCode),
		"headers":     flatHeaders(resp.Header),
		"body":        decodeBody(resp.Header.Get("Content-Type"), data),
	}}
	a.transient, a.retryAfter = retryable(resp)
	if n.failOnStatus && resp.StatusCode >= 400 {
		a.err = fmt.Errorf("%s %s answered HTTP %d", n.method, req.URL.Redacted(), resp.StatusCode)
	}
	return a
}

func (n *httpNode) request(ctx context.Context, r *run, in *exprEnv) (*http.Request, error) {
	rawURL, err := n.url.eval(ctx, in, r.limits.expr)
	if err != nil {
		return nil, err
	}
	u, err := checkURL(textOf(rawURL))
	if err != nil {
		return nil, err
	}
	if n.query != nil {
		qv, err := n.query.eval(ctx, in, r.limits.expr)
		if err != nil {
			return nil, err
		}
		q := u.Query()
		for _, k := range sortedKeys(qv.(map[string]any)) {
			q.Set(k, textOf(qv.(map[string]any)[k]))
		}
		u.RawQuery = q.Encode()
	}
	body, contentType, err := n.encodeBody(ctx, r, in)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, n.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("building the request: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("User-Agent", "flowgate-engine")
	headers, err := evalHeaders(ctx, n.headers, in, r)
	if err != nil {
		return nil, err
	}
	for name, val := range headers {
		req.Header.Set(name, val)
	}
	return req, nil
}

func (n *httpNode) encodeBody(ctx context.Context, r *run, in *exprEnv) (io.Reader, string, error) {
	if n.body == nil {
		return nil, "", nil
	}
	v, err := n.body.eval(ctx, in, r.limits.expr)
	if err != nil {
		return nil, "", err
	}
	if s, ok := v.(string); ok {
		return strings.NewReader(s), "text/plain; charset=utf-8", nil
	}
	raw, err := json.Marshal(sanitizeFloats(v))
	if err != nil {
		return nil, "", fmt.Errorf("encoding the body as JSON: %w", err)
	}
	return bytes.NewReader(raw), "application/json", nil
}

// describeHTTPError says why a request failed in terms of the URL the
// workflow asked for. Network errors are reduced to their cause: their own
// text names the resolver's address or the address a name resolved to,
// which would map the internal network for whoever writes workflows.
func describeHTTPError(ctx context.Context, err error, timeout time.Duration) error {
	target, host := "the destination", ""
	var uerr *url.Error
	if errors.As(err, &uerr) {
		if u, perr := url.Parse(uerr.URL); perr == nil {
			target, host = u.Redacted(), u.Hostname()
		}
	}
	var (
		dnsErr *net.DNSError
		opErr  *net.OpError
	)
	switch {
	case errors.Is(err, errBlockedAddress):
		return fmt.Errorf("%s: %s", errBlockedAddress, target)
	case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("request timed out after %s", timeout)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("could not resolve host %q", host)
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("could not reach host %q: %s", host, syscallCause(opErr.Err))
	case errors.As(err, &opErr):
		return fmt.Errorf("connection to host %q failed: %s", host, syscallCause(opErr.Err))
	case uerr != nil:
		return fmt.Errorf("%s %s: %v", uerr.Op, target, uerr.Err)
	}
	return err
}

// syscallCause is the part of a network error that names no address:
// "connection refused", "i/o timeout".
func syscallCause(err error) string {
	var sysErr *os.SyscallError
	if errors.As(err, &sysErr) {
		return sysErr.Err.Error()
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return "timed out"
	}
	return "network error"
}

func flatHeaders(h http.Header) map[string]any {
	out := make(map[string]any, len(h))
	for name, vals := range h {
		out[strings.ToLower(name)] = strings.Join(vals, ", ")
	}
	return out
}

func decodeBody(contentType string, data []byte) any {
	mt, _, _ := mime.ParseMediaType(contentType)
	if mt == "application/json" || strings.HasSuffix(mt, "+json") {
		var v any
		if err := json.Unmarshal(data, &v); err == nil {
			return v
		}
	}
	return string(data)
}
