package server

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
)

// TestRESTFastMatchesTranscoder sends the same REST calls to a gateway
// that serves the common ones directly and to one that transcodes every
// call, and wants the same answers, byte for byte: status, headers and
// body. The calls cover what the direct path serves (successes with
// upstream headers and trailers, upstream errors with details and
// metadata, refusals by authentication, scopes and rate limits) and what
// it leaves to the transcoder (query strings, deadlines, bodies that do
// not decode, other content types and methods).
func TestRESTFastMatchesTranscoder(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	open := b.cfg
	secured := b.cfg
	secured.Security, _ = secConfig(t)
	secured.Security.RateLimitIP, secured.Security.RateLimitIPBurst = 0.001, 12

	type call struct {
		name, method, path, body string
		header                   http.Header
	}
	json := http.Header{"Content-Type": {"application/json"}}
	with := func(h http.Header, kv ...string) http.Header {
		h = h.Clone()
		if h == nil {
			h = http.Header{}
		}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return h
	}
	const execute = "/api/v1/workflow/execute"
	calls := []call{
		{"success", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, json},
		{"success, charset", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, http.Header{"Content-Type": {"application/json; charset=UTF-8"}}},
		{"success, gzip accepted", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "Accept-Encoding", "gzip")},
		{"success, spoofed identity", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "X-Flowgate-Subject", "root", "Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")},
		{"success, empty body", "POST", execute, ``, json},
		{"success, no content type", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, http.Header{}},
		{"invalid argument with details", "POST", execute, `{"workflow_definition":{"name":"invalid"}}`, json},
		{"not found", "POST", execute, `{"workflow_definition":{"name":"missing"}}`, json},
		{"precondition", "POST", execute, `{"workflow_definition":{"name":"precondition"}}`, json},
		{"huge response", "POST", execute, `{"workflow_definition":{"name":"huge"}}`, json},
		{"deadline header", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "X-Server-Timeout", "5")},
		{"bad deadline header", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "X-Server-Timeout", "soon")},
		{"query string", "POST", execute + "?workflow_definition.name=q", `{}`, json},
		{"unknown field", "POST", execute, `{"nope":1}`, json},
		{"malformed JSON", "POST", execute, `{"workflow_definition":`, json},
		{"wrong type", "POST", execute, `{"workflow_definition":{"name":7}}`, json},
		{"text body", "POST", execute, `hello`, http.Header{"Content-Type": {"text/plain"}}},
		{"wrong method", "GET", execute, ``, nil},
		{"unimplemented upstream method", "POST", "/api/v1/session", `{}`, json},
		{"unknown route", "POST", "/api/v1/nope", `{}`, json},
	}
	// transcoded are the calls the direct path leaves to the transcoder.
	transcoded := map[string]bool{
		"success, no content type": true, "deadline header": true, "bad deadline header": true,
		"query string": true, "unknown field": true, "malformed JSON": true, "wrong type": true,
		"text body": true, "wrong method": true, "unknown route": true,
	}
	run := func(t *testing.T, cfg Config, calls []call) {
		direct, directURL := startGateway(t, cfg)
		cfg.TranscodeREST = true
		_, transcodedURL := startGateway(t, cfg)
		client := http1Client(t)
		for _, c := range calls {
			before := direct.rest.served.Load()
			var answers [2]string
			for i, base := range []string{directURL, transcodedURL} {
				req, err := http.NewRequestWithContext(t.Context(), c.method, base+c.path, strings.NewReader(c.body))
				if err != nil {
					t.Fatal(err)
				}
				req.Header = with(c.header, "X-Request-Id", "same-id")
				res, err := client.Do(req)
				if err != nil {
					t.Fatalf("%s: %v", c.name, err)
				}
				data, _ := io.ReadAll(res.Body)
				res.Body.Close()
				res.Header.Del("Date")
				var dump bytes.Buffer
				_ = res.Header.Write(&dump)
				answers[i] = res.Status + "\n" + dump.String() + "\n" + string(data)
			}
			if took := direct.rest.served.Load() > before; took == transcoded[c.name] {
				t.Errorf("%s: served directly %v, want %v", c.name, took, !took)
			}
			if answers[0] != answers[1] {
				t.Errorf("%s: served directly:\n%.2000s\ntranscoded:\n%.2000s", c.name, answers[0], answers[1])
			}
		}
	}
	t.Run("open", func(t *testing.T) { run(t, open, calls) })
	t.Run("malformed upstream response", func(t *testing.T) {
		cfg := open
		cfg.Engine = Upstream{Address: rawGRPCBackend(t, []byte{0xff, 0xff, 0xff})}
		run(t, cfg, calls[:1])
	})
	t.Run("secured", func(t *testing.T) {
		tok := hsToken(t, nil)
		var sec []call
		for _, c := range calls[:10] {
			c.header = with(c.header, "Authorization", "Bearer "+tok)
			sec = append(sec, c)
		}
		sec = append(sec,
			call{"no credentials", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, json},
			call{"bad token", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "Authorization", "Bearer nope")},
			call{"api key", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "X-Api-Key", testAPIKey)},
			call{"rate limited", "POST", execute, `{"workflow_definition":{"name":"ok"}}`, with(json, "Authorization", "Bearer "+tok)},
		)
		run(t, secured, sec)
	})
}

// rawGRPCBackend answers every gRPC call with reply, whatever it is, and
// returns its address.
func rawGRPCBackend(t *testing.T, reply []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(frameCodec{}), grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		var in frame
		if err := stream.RecvMsg(&in); err != nil {
			return err
		}
		return stream.SendMsg(&frame{data: reply})
	}))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}
