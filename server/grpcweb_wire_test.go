package server

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"connectrpc.com/connect"
)

// TestGRPCWebWriterSplitWrites feeds a response to the writer in every
// split a transcoder might write it in, flushing between pieces: data
// frames pass unchanged (even when they hold a trailer-like text), trailer
// names are lower-cased and their values kept.
func TestGRPCWebWriterSplitWrites(t *testing.T) {
	t.Parallel()
	frame := func(flags byte, payload string) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{flags}, uint32(len(payload))), payload...) //nolint:gosec // small
	}
	body := slices.Concat(frame(0, "Grpc-Status: Data"), frame(0, ""), frame(0x80, "Grpc-Status: 13\r\nGrpc-Message: Model Went Away\r\nX-Trace: A:B\r\n"))
	want := slices.Concat(frame(0, "Grpc-Status: Data"), frame(0, ""), frame(0x80, "grpc-status: 13\r\ngrpc-message: Model Went Away\r\nx-trace: A:B\r\n"))
	for _, text := range []bool{false, true} {
		for piece := 1; piece <= len(body); piece++ {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", "application/grpc-web+proto")
			w := &grpcWebWriter{ResponseWriter: rec, text: text}
			written := bytes.Clone(body)
			for rest := written; len(rest) > 0; rest = rest[min(piece, len(rest)):] {
				if _, err := w.Write(rest[:min(piece, len(rest))]); err != nil {
					t.Fatal(err)
				}
				w.Flush()
			}
			w.finish()
			if !bytes.Equal(written, body) {
				t.Fatalf("the writer changed the caller's bytes: %q", written)
			}
			got := rec.Body.Bytes()
			if text {
				if rec.Header().Get("Content-Type") != "application/grpc-web-text+proto" {
					t.Fatalf("Content-Type %q", rec.Header().Get("Content-Type"))
				}
				got = decodeChunkedBase64(t, got)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("text %t, pieces of %d: got %q, want %q", text, piece, got, want)
			}
		}
	}
}

// TestBase64BodyChunks reads text-mode request bodies of several padded
// chunks, a byte at a time and whole.
func TestBase64BodyChunks(t *testing.T) {
	t.Parallel()
	enc := base64.StdEncoding.EncodeToString
	payload := []byte("\x00\x00\x00\x00\x07message and more")
	var chunked string
	for _, cut := range [][2]int{{0, 1}, {1, 3}, {3, 8}, {8, len(payload)}} {
		chunked += enc(payload[cut[0]:cut[1]])
	}
	long := bytes.Repeat([]byte("0123456789"), 2000)
	for name, c := range map[string]struct {
		body string
		want []byte
	}{
		"padded chunks": {chunked, payload},
		"one chunk":     {enc(long), long},
		"empty":         {"", nil},
		"white space":   {"AAAA\r\nAAUK\n A2N \tyZQ==\n", []byte("\x00\x00\x00\x00\x05\n\x03cre")},
	} {
		for _, oneByte := range []bool{false, true} {
			var src io.Reader = strings.NewReader(c.body)
			if oneByte {
				src = iotest.OneByteReader(src)
			}
			got, err := io.ReadAll(&base64Body{src: io.NopCloser(src)})
			if err != nil || !bytes.Equal(got, c.want) {
				t.Errorf("%s (byte by byte %t): %q, %v", name, oneByte, got, err)
			}
		}
	}
	for _, bad := range []string{"AA", "AAAAA", "A===", "AA=A", "****"} {
		if _, err := io.ReadAll(&base64Body{src: io.NopCloser(strings.NewReader(bad))}); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%q: %v, want InvalidArgument", bad, err)
		}
	}
}

// discardWriter is a ResponseWriter that keeps nothing of the body.
type discardWriter struct{ header http.Header }

func (d discardWriter) Header() http.Header       { return d.header }
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (discardWriter) WriteHeader(int)             {}

// TestGRPCWebTextBoundedMemory streams 8 MiB each way through the text
// mode and checks that what it allocates does not grow with the stream:
// nothing is buffered whole. Not parallel: it reads the process's
// allocation counter.
func TestGRPCWebTextBoundedMemory(t *testing.T) {
	const total, frameSize = 8 << 20, 64 << 10
	frame := append(binary.BigEndian.AppendUint32([]byte{0}, frameSize-5), make([]byte, frameSize-5)...)
	body := base64.StdEncoding.EncodeToString(bytes.Repeat(frame, total/frameSize))
	allocated := func(run func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		run()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	out := allocated(func() {
		w := &grpcWebWriter{ResponseWriter: discardWriter{http.Header{"Content-Type": {"application/grpc-web+proto"}}}, text: true}
		for range total / frameSize {
			_, _ = w.Write(frame)
			w.Flush()
		}
		w.finish()
	})
	in := allocated(func() {
		n, err := io.Copy(io.Discard, &base64Body{src: io.NopCloser(strings.NewReader(body))})
		if err != nil || n != total {
			t.Errorf("decoded %d bytes: %v", n, err)
		}
	})
	t.Logf("allocated %d out, %d in", out, in)
	const limit = 256 << 10
	if out > limit || in > limit {
		t.Errorf("streaming 8 MiB allocated %d bytes out and %d in, want under %d each", out, in, limit)
	}
}
