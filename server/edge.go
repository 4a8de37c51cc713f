package server

import (
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// What the transcoder (vanguard v0.4.0) gets wrong at the edge, settled in
// front of it: requests it would refuse for no fault of the caller are
// normalised, and headers it would misreport are checked here with errors
// that say what to send.

// maxTimeoutHeader caps the deadlines callers send in headers. gRPC allows
// up to 99999999 hours, which the transcoder refuses beyond 8 hours; the
// gateway caps every deadline well below that anyway (-max-timeout).
const maxTimeoutHeader = 8 * time.Hour

// checkEdgeHeaders refuses headers that cannot be honoured and caps
// deadlines that are too long to represent, on every protocol.
func checkEdgeHeaders(r *http.Request) error {
	for name, vals := range r.Header {
		if !strings.HasSuffix(name, "-Bin") {
			continue
		}
		for _, v := range vals {
			for part := range strings.SplitSeq(v, ",") {
				if _, err := connect.DecodeBinaryHeader(strings.TrimSpace(part)); err != nil {
					return badRequest(name, "a binary header must be base64")
				}
			}
		}
	}
	if !isRPCRequest(r) {
		return checkRESTTimeout(r.Header)
	}
	if v := r.Header.Get("Grpc-Timeout"); v != "" {
		return checkGRPCTimeout(r.Header, v)
	}
	if v := r.Header.Get("Connect-Timeout-Ms"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 || len(v) > 10 {
			return badRequest("Connect-Timeout-Ms", "must be a whole number of milliseconds, at most 10 digits")
		}
	}
	return nil
}

// checkGRPCTimeout checks a grpc-timeout header (at most 8 digits and a
// unit, H M S m u n) and caps it.
func checkGRPCTimeout(h http.Header, v string) error {
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[v[len(v)-1]]
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if !ok || err != nil || n < 0 || len(v) > 9 {
		return badRequest("Grpc-Timeout", "must be at most 8 digits and a unit (H, M, S, m, u or n)")
	}
	if time.Duration(n) > maxTimeoutHeader/unit {
		h.Set("Grpc-Timeout", strconv.FormatInt(int64(maxTimeoutHeader/time.Second), 10)+"S")
	}
	return nil
}

// prepareREST settles a REST request for the transcoder, and returns the
// URL the transcoder should see. The caller's URL is not changed.
func prepareREST(r *http.Request) *url.URL {
	// The transcoder matches routes on the decoded path and then decodes
	// each path parameter again: a%252Fb would reach the backend as a/b.
	// Given the path as sent, it decodes once.
	u := *r.URL
	u.Path, u.RawPath = u.EscapedPath(), ""
	if strings.HasPrefix(u.Path, webhookPrefix) {
		// Any body, any content type, passed on as sent; the query goes
		// to the webhook forwarder whole (the transcoder maps query
		// parameters only onto scalar fields).
		if u.RawQuery != "" {
			r.Header.Set(webhookQueryHeader, u.RawQuery)
			u.RawQuery = ""
		}
		r.Header.Set(webhookMethodHeader, r.Method)
		if ua := r.UserAgent(); ua != "" {
			r.Header.Set(webhookAgentHeader, ua)
		}
		return &u
	}
	if isJSONMediaType(r.Header.Get("Content-Type")) {
		r.Header.Set("Content-Type", "application/json")
	}
	if r.ContentLength == 0 && (r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch) {
		// An empty body is an empty message, as with grpc-gateway; the
		// transcoder would send the backend no message at all.
		r.Body, r.ContentLength = newBufferedBody([]byte("{}")), 2
		r.Header.Set("Content-Type", "application/json")
	}
	return &u
}

// prepareConnect gives a Connect unary call with an empty JSON body the
// empty message an empty binary body already is; the transcoder would
// send the backend no message at all.
func prepareConnect(r *http.Request) {
	if r.ContentLength == 0 && r.Method == http.MethodPost && r.Header.Get("Content-Type") == "application/json" {
		r.Body, r.ContentLength = io.NopCloser(strings.NewReader("{}")), 2
	}
}

// isJSONMediaType reports whether ct is JSON in UTF-8, written any way
// RFC 9110 allows: case-insensitive, charset optional.
func isJSONMediaType(ct string) bool {
	if ct == "" || ct == "application/json" {
		return false // nothing to normalise
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return false
		}
	}
	return true
}

// checkRESTTimeout checks X-Server-Timeout (seconds, fractions allowed)
// and caps it as grpc-timeout is capped.
func checkRESTTimeout(h http.Header) error {
	v := h.Get("X-Server-Timeout")
	if v == "" {
		return nil
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(secs) || secs <= 0 {
		return badRequest("X-Server-Timeout", "must be a positive number of seconds")
	}
	if secs > maxTimeoutHeader.Seconds() {
		h.Set("X-Server-Timeout", strconv.FormatFloat(maxTimeoutHeader.Seconds(), 'f', -1, 64))
	}
	return nil
}

// dropProtocolHeaders removes what a gRPC or Connect handler behind the
// transcoder wrote into a REST response's headers and trailers.
func dropProtocolHeaders(h http.Header) {
	for name := range h {
		key := strings.TrimPrefix(name, http.TrailerPrefix)
		if key != name || name == "Trailer" || strings.HasPrefix(key, "Grpc-") || strings.HasPrefix(key, "Connect-") {
			delete(h, name)
		}
	}
}

// listParams are the query parameters a REST call may give more than
// once: the repeated scalar fields of the request messages of routes whose
// query string maps onto fields, by the names the transcoder takes (field
// and JSON names, dotted through nested messages).
func listParams(svcs []protoreflect.ServiceDescriptor) map[string]bool {
	lists := map[string]bool{}
	var walk func(msg protoreflect.MessageDescriptor, prefixes []string, depth int)
	walk = func(msg protoreflect.MessageDescriptor, prefixes []string, depth int) {
		fields := msg.Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			var names []string
			for _, p := range prefixes {
				names = append(names, p+string(f.Name()))
				if f.JSONName() != string(f.Name()) {
					names = append(names, p+f.JSONName())
				}
			}
			switch {
			case f.IsList() && f.Message() == nil:
				for _, n := range names {
					lists[n] = true
				}
			case !f.IsList() && !f.IsMap() && f.Message() != nil && depth < 8:
				for j := range names {
					names[j] += "."
				}
				walk(f.Message(), names, depth+1)
			}
		}
	}
	for _, svc := range svcs {
		methods := svc.Methods()
		for i := range methods.Len() {
			md := methods.Get(i)
			rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
			if rule == nil {
				continue
			}
			for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
				if r.GetBody() != "*" {
					walk(md.Input(), []string{""}, 0)
				}
			}
		}
	}
	return lists
}

// checkQueryRepeats refuses a query parameter given more than once unless
// it names a list: the transcoder would keep its last value and drop the
// others unseen.
func checkQueryRepeats(rawQuery string, lists map[string]bool) error {
	if !strings.Contains(rawQuery, "&") {
		return nil // at most one parameter
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil // the transcoder says what is wrong with it
	}
	repeated := ""
	for key, vals := range query {
		if len(vals) > 1 && !lists[key] && (repeated == "" || key < repeated) {
			repeated = key
		}
	}
	if repeated != "" {
		return badRequest(repeated, "given more than once; it takes one value")
	}
	return nil
}
