package server

// The runners of the protocol edge table (edge_test.go): one per protocol,
// each sending a row's form of its case and checking the answer in that
// protocol's own shape.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// runRESTEdge sends the REST form of a case over HTTP/1.1 and checks the
// contract's answer: status, the error body and nothing of gRPC.
func runRESTEdge(t *testing.T, base string, r *restEdge, want edgeWant) {
	body := []byte(r.body)
	if r.header.Get("Content-Encoding") == "gzip" {
		body = gzipped(t, body)
	}
	req, err := http.NewRequestWithContext(t.Context(), r.method, base+r.path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if r.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	res, err := http1Client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	noRPCHeaders(t, res)
	if want.ok {
		if res.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200: %s", res.StatusCode, data)
		}
		return
	}
	checkContractError(t, res.StatusCode, res.Header, data, want)
}

// checkContractError checks a REST or SSE error: status, JSON content type,
// exactly {"error":{"code","message"[,"details"]}}, and a plain message.
func checkContractError(t *testing.T, status int, h http.Header, data []byte, want edgeWant) {
	t.Helper()
	if status != want.status {
		t.Errorf("status %d, want %d: %s", status, want.status, data)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	checkErrorBody(t, data, want)
}

func checkErrorBody(t *testing.T, data []byte, want edgeWant) {
	t.Helper()
	var body struct {
		Error struct {
			Code    string         `json:"code"`
			Message string         `json:"message"`
			Details map[string]any `json:"details"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Fatalf("body not in the contract's shape (%v): %s", err, data)
	}
	e := body.Error
	if e.Code != want.restCode {
		t.Errorf("code %q, want %q: %s", e.Code, want.restCode, data)
	}
	if !strings.Contains(e.Message, want.message) {
		t.Errorf("message %q does not contain %q", e.Message, want.message)
	}
	if strings.ContainsAny(e.Message, "{}\n") || strings.Contains(e.Message, "strconv.") || strings.Contains(e.Message, "proto:") {
		t.Errorf("message is not plain text: %q", e.Message)
	}
	if want.detail != "" && e.Details[want.detail] == nil {
		t.Errorf("details %v lack %q", e.Details, want.detail)
	}
}

// noRPCHeaders fails if a REST response carries a protocol header or
// trailer of gRPC or Connect.
func noRPCHeaders(t *testing.T, res *http.Response) {
	t.Helper()
	for _, h := range []http.Header{res.Header, res.Trailer} {
		for name := range h {
			if strings.HasPrefix(name, "Grpc-") || strings.HasPrefix(name, "Connect-") || name == "Trailer" {
				t.Errorf("REST response carries %s: %v", name, h[name])
			}
		}
	}
}

// runSSEEdge reads a stream route and checks its error: a plain HTTP error
// before the stream, or a final error event in it.
func runSSEEdge(t *testing.T, base string, s *sseEdge, want edgeWant) {
	res := sseGet(t, http1Client(t), base+s.path, nil)
	defer res.Body.Close()
	if !want.inStream {
		data, _ := io.ReadAll(res.Body)
		checkContractError(t, res.StatusCode, res.Header, data, want)
		return
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want a stream", res.StatusCode)
	}
	events := readSSE(t, res.Body, func(e sseEvent) bool { return e.name == "error" })
	if len(events) == 0 || events[len(events)-1].name != "error" {
		t.Fatalf("stream ended without an error event: %+v", events)
	}
	data, _ := json.Marshal(events[len(events)-1].data)
	checkErrorBody(t, data, want)
}

// runRPCEdge sends the RPC form of a case on one protocol, raw, and reads
// the answer in that protocol's own error shape.
func runRPCEdge(t *testing.T, base, protocol string, r *rpcEdge, want edgeWant) {
	req := rpcEdgeRequest(t, base, protocol, r)
	client := http1Client(t)
	if protocol == "grpc" {
		client = h2cClient(t)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	code, msg := rpcOutcome(t, protocol, res, data)
	if want.ok {
		if code != 0 {
			t.Fatalf("code %v (%q), want OK", code, msg)
		}
		return
	}
	if code != want.code {
		t.Errorf("code %v, want %v (message %q)", code, want.code, msg)
	}
	if !strings.Contains(msg, want.message) {
		t.Errorf("message %q does not contain %q", msg, want.message)
	}
	if strings.Contains(msg, "strconv.") || strings.Contains(msg, "proto:") || strings.HasPrefix(msg, "{") {
		t.Errorf("message is not plain text: %q", msg)
	}
}

func rpcEdgeRequest(t *testing.T, base, protocol string, r *rpcEdge) *http.Request {
	payload := rpcPayload(t, protocol, r)
	if r.gzip {
		payload = gzipped(t, payload)
	}
	method, target, ct := http.MethodPost, base+r.procedure, ""
	var body []byte
	switch protocol {
	case "connect-json", "connect-proto":
		ct, body = "application/"+strings.TrimPrefix(protocol, "connect-"), payload
	case "grpc", "grpc-web":
		ct, body = "application/"+protocol+"+proto", envelope(payload, r.gzip)
	case "grpc-web-text":
		ct, body = "application/grpc-web-text", []byte(base64.StdEncoding.EncodeToString(envelope(payload, r.gzip)))
	}
	if r.get {
		method, body = http.MethodGet, nil
		target += "?connect=v1&encoding=json&message=" + url.QueryEscape(string(payload))
	}
	req, err := http.NewRequestWithContext(t.Context(), method, target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if !r.get {
		req.Header.Set("Content-Type", ct)
	}
	switch {
	case strings.HasPrefix(protocol, "connect"):
		req.Header.Set("Connect-Protocol-Version", "1")
		if r.gzip {
			req.Header.Set("Content-Encoding", "gzip")
		}
	case r.gzip:
		req.Header.Set("Grpc-Encoding", "gzip")
	}
	for k, v := range r.header {
		if protocolHeader(k) && !headerOf(protocol, k) {
			continue
		}
		req.Header[k] = v
	}
	return req
}

// protocolHeader and headerOf keep a row's protocol headers to the
// protocols they belong to.
func protocolHeader(name string) bool {
	return strings.HasPrefix(name, "Grpc-") || strings.HasPrefix(name, "Connect-") || name == "Content-Encoding"
}

func headerOf(protocol, name string) bool {
	if strings.HasPrefix(protocol, "grpc") {
		return strings.HasPrefix(name, "Grpc-")
	}
	return !strings.HasPrefix(name, "Grpc-")
}

func rpcPayload(t *testing.T, protocol string, r *rpcEdge) []byte {
	switch {
	case r.empty:
		return nil
	case r.json != "":
		return []byte(r.json)
	case protocol == "connect-json":
		data, err := protojson.Marshal(r.msg)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	data, err := proto.Marshal(r.msg)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// envelope frames one message as gRPC and gRPC-Web do.
func envelope(msg []byte, compressed bool) []byte {
	out := make([]byte, 5, 5+len(msg))
	if compressed {
		out[0] = 1
	}
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg))) //nolint:gosec // small test messages
	return append(out, msg...)
}

// rpcOutcome reads the code and message of a response in the protocol's
// own shape, and fails on anything else (a plain-text body, a bare HTTP
// status).
func rpcOutcome(t *testing.T, protocol string, res *http.Response, data []byte) (connect.Code, string) {
	t.Helper()
	ct := res.Header.Get("Content-Type")
	if strings.HasPrefix(protocol, "connect") {
		if res.StatusCode == http.StatusOK {
			return 0, ""
		}
		var wire struct {
			Code    connect.Code `json:"code"`
			Message string       `json:"message"`
		}
		if ct != "application/json" || json.Unmarshal(data, &wire) != nil || wire.Code == 0 {
			t.Fatalf("not a Connect error: %d %q %q", res.StatusCode, ct, data)
		}
		return wire.Code, wire.Message
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "application/"+protocol) {
		t.Fatalf("not a %s response: %d %q %q", protocol, res.StatusCode, ct, data)
	}
	if protocol == "grpc-web-text" {
		data = decodeTextChunks(t, data)
	}
	status := grpcStatusOf(res.Header, res.Trailer)
	if strings.HasPrefix(protocol, "grpc-web") && status.Get("Grpc-Status") == "" {
		status = grpcWebTrailer(t, data)
	}
	code, err := strconv.Atoi(status.Get("Grpc-Status"))
	if err != nil {
		t.Fatalf("no grpc-status: headers %v trailers %v body %q", res.Header, res.Trailer, data)
	}
	msg, _ := url.PathUnescape(status.Get("Grpc-Message"))
	return connect.Code(code), msg //nolint:gosec // a small status code
}

// grpcStatusOf returns the status headers, from the trailers or, in a
// trailers-only response, the headers (any case).
func grpcStatusOf(header, trailer http.Header) http.Header {
	out := http.Header{}
	for _, h := range []http.Header{header, trailer} {
		for k, v := range h {
			name := http.CanonicalHeaderKey(k)
			if (name == "Grpc-Status" || name == "Grpc-Message") && len(v) > 0 {
				out.Set(name, v[0])
			}
		}
	}
	return out
}

// grpcWebTrailer reads the trailer frame that ends a gRPC-Web body.
func grpcWebTrailer(t *testing.T, data []byte) http.Header {
	t.Helper()
	for len(data) >= 5 {
		n := int(binary.BigEndian.Uint32(data[1:5]))
		if len(data) < 5+n {
			break
		}
		if data[0]&0x80 != 0 {
			out := http.Header{}
			for line := range strings.SplitSeq(string(data[5:5+n]), "\r\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					out.Set(strings.TrimSpace(k), strings.TrimSpace(v))
				}
			}
			return out
		}
		data = data[5+n:]
	}
	t.Fatalf("gRPC-Web body has no trailer frame")
	return nil
}

// decodeTextChunks decodes a gRPC-Web text body: base64 chunks, each padded,
// one after another. Every four characters decode on their own.
func decodeTextChunks(t *testing.T, data []byte) []byte {
	t.Helper()
	var out []byte
	for i := 0; i+4 <= len(data); i += 4 {
		quad, err := base64.StdEncoding.DecodeString(string(data[i : i+4]))
		if err != nil {
			t.Fatalf("text-mode body is not base64: %q", data)
		}
		out = append(out, quad...)
	}
	if len(data)%4 != 0 {
		t.Fatalf("text-mode body is not whole base64: %q", data)
	}
	return out
}
