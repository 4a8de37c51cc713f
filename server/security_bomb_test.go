package server

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// gzipBomb returns a small gzip stream of an ExecuteWorkflow request that
// inflates to about size bytes.
func gzipBomb(tb testing.TB, marker string, size int) []byte {
	tb.Helper()
	msg, err := proto.Marshal(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: &enginev1.WorkflowDefinition{
		Name: marker + strings.Repeat("a", size),
	}})
	if err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	_, _ = zw.Write(msg)
	_ = zw.Close()
	return buf.Bytes()
}

// TestCompressedBodyLimit: the body limit holds for what a compressed
// request inflates to, not only for the bytes on the wire.
func TestCompressedBodyLimit(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	const inflated = 2 << 20 // far past the fixture's 64 KiB limit and the transcoder's buffer
	auth := "Bearer " + hsToken(t, nil)
	send := func(t *testing.T, contentType string, header map[string]string, body []byte) *http.Response {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.url+"/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", bytes.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("Authorization", auth)
		for k, v := range header {
			req.Header.Set(k, v)
		}
		res, err := h2cClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	t.Run("connect unary", func(t *testing.T) {
		m := marker("bomb", "connect")
		bomb := gzipBomb(t, m, inflated)
		if len(bomb) >= testMaxBody {
			t.Fatalf("bomb is %d bytes on the wire", len(bomb))
		}
		res := send(t, "application/proto", map[string]string{"Content-Encoding": "gzip", "Connect-Protocol-Version": "1"}, bomb)
		if res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status %d, want a resource-exhausted error", res.StatusCode)
		}
		if len(f.rec.find(m)) != 0 {
			t.Error("the backend received the inflated message")
		}
	})
	grpcBomb := func(t *testing.T, m string, size int) (status, message string) {
		t.Helper()
		bomb := gzipBomb(t, m, size)
		env := make([]byte, 5, 5+len(bomb))
		env[0] = 1
		binary.BigEndian.PutUint32(env[1:], uint32(len(bomb)))
		res := send(t, "application/grpc", map[string]string{"Grpc-Encoding": "gzip", "Te": "trailers"}, append(env, bomb...))
		status = res.Trailer.Get("Grpc-Status")
		if status == "" {
			status = res.Header.Get("Grpc-Status") // trailers-only response
		}
		if len(f.rec.find(m)) != 0 {
			t.Error("the backend received the inflated message")
		}
		return status, res.Header.Get("Grpc-Message") + res.Trailer.Get("Grpc-Message")
	}
	t.Run("grpc past the body limit", func(t *testing.T) {
		// Inflates within the transcoder's buffer: the handler's limit
		// answers with the protocol's resource-exhausted code.
		if status, msg := grpcBomb(t, marker("bomb", "grpc", "small"), 3*testMaxBody); status != "8" {
			t.Errorf("grpc-status %q (%s), want 8 (resource exhausted)", status, msg)
		}
	})
	t.Run("grpc past the transcoder buffer", func(t *testing.T) {
		// Inflates past the transcoder's buffer, which stops reading; the
		// code the caller sees is then the transcoder's (vanguard v0.4.0
		// reports the truncated request as having no message).
		if status, msg := grpcBomb(t, marker("bomb", "grpc", "huge"), inflated); status == "0" || status == "" {
			t.Errorf("grpc-status %q (%s): the bomb was not refused", status, msg)
		}
	})
}
