package server

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// gRPC-Web content types. Google's grpc-web client sends its default text
// mode as application/grpc-web-text: the binary protocol with the body in
// base64, which the transcoder does not know.
const (
	grpcWebType     = "application/grpc-web"
	grpcWebTextType = "application/grpc-web-text"
)

// grpcWebLayer puts right what the transcoder gets wrong for browsers'
// gRPC-Web clients, as Envoy's grpc_web filter does in front of a gRPC
// server. The transcoder writes the trailer frame with canonical names
// (Grpc-Status), which Google's client does not find: it then reports
// every error as "Incomplete response" and failed streams as OK; the spec
// asks for lower case. Text mode is decoded here into the binary protocol
// and the response encoded back, frame by frame as it is flushed, so that
// everything behind this layer, error writers included, sees binary
// gRPC-Web only.
func grpcWebLayer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		binaryType, text, ok := grpcWebRequestType(headerValue(r.Header, "Content-Type"))
		if !ok {
			next.ServeHTTP(w, r)
			return
		}
		gw := &grpcWebWriter{ResponseWriter: w, text: text}
		if text {
			r = r.Clone(r.Context())
			r.Header.Set("Content-Type", binaryType)
			r.Header.Del("Content-Length")
			r.ContentLength = -1 // the decoded length is known only once read
			r.Body = &base64Body{src: r.Body}
		}
		next.ServeHTTP(gw, r)
		gw.finish()
	})
}

// grpcWebRequestType reports whether contentType is gRPC-Web, whether it
// is text mode, and the binary content type that stands for it.
func grpcWebRequestType(contentType string) (binaryType string, text, ok bool) {
	ct, _, _ := strings.Cut(contentType, ";")
	ct = strings.ToLower(strings.TrimSpace(ct))
	switch {
	case ct == grpcWebTextType:
		return grpcWebType + "+proto", true, true
	case strings.HasPrefix(ct, grpcWebTextType+"+"):
		return grpcWebType + strings.TrimPrefix(ct, grpcWebTextType), true, true
	case ct == grpcWebType || strings.HasPrefix(ct, grpcWebType+"+"):
		return ct, false, true
	}
	return "", false, false
}

// grpcWebWriter lower-cases the trailer names of a gRPC-Web response and,
// for text-mode callers, encodes it in base64. A response that is not
// gRPC-Web (a CORS refusal, say) passes through untouched.
type grpcWebWriter struct {
	http.ResponseWriter
	text    bool
	started bool // the header is written
	web     bool // the response is gRPC-Web
	frames  trailerCaser
	encoder *base64Writer // text mode only
}

func (w *grpcWebWriter) WriteHeader(code int) {
	if w.started {
		return
	}
	w.started = true
	h := w.Header()
	ct := h.Get("Content-Type")
	w.web = ct == grpcWebType || strings.HasPrefix(ct, grpcWebType+"+")
	if w.web && w.text {
		h.Set("Content-Type", grpcWebTextType+strings.TrimPrefix(ct, grpcWebType))
		h.Del("Content-Length")
		w.encoder = &base64Writer{dst: w.ResponseWriter}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *grpcWebWriter) Write(p []byte) (int, error) {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if !w.web {
		return w.ResponseWriter.Write(p)
	}
	head, tail := w.frames.rewrite(p)
	if err := w.send(head); err != nil {
		return 0, err
	}
	if err := w.send(tail); err != nil {
		return len(head), err
	}
	return len(p), nil
}

func (w *grpcWebWriter) send(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if w.encoder != nil {
		return w.encoder.write(p)
	}
	_, err := w.ResponseWriter.Write(p)
	return err
}

// Flush sends what was written so far; in text mode that includes the
// bytes short of a whole base64 quantum, padded, so that a message is
// never held back until the next one.
func (w *grpcWebWriter) Flush() {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.encoder != nil && w.encoder.flush() != nil {
		return
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *grpcWebWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// finish completes the response once the handler returns. The header is
// written here when the handler wrote nothing, so that even an empty
// response is labelled text for a text-mode caller.
func (w *grpcWebWriter) finish() {
	if !w.started {
		w.WriteHeader(http.StatusOK)
	}
	if w.encoder != nil {
		_ = w.encoder.flush()
	}
}

// trailerCaser follows the gRPC-Web frames of a response across writes
// and lower-cases the names in its trailer frame. It keeps no data frame
// in memory: those pass through as written.
type trailerCaser struct {
	prefix    [5]byte
	prefixLen int
	left      uint32 // payload bytes of the current frame still to come
	trailer   bool   // the current frame is an uncompressed trailer frame
	inName    bool   // at a trailer line's name, before its colon
	cut       int    // where in the current write the changed bytes start; -1 for none
	scratch   []byte // the changed bytes: a writer must not change the caller's
}

// rewrite returns p as head and nothing, or, when p holds trailer names to
// change, the part of p before the first of them as head and a
// lower-cased copy of the rest as tail.
func (c *trailerCaser) rewrite(p []byte) (head, tail []byte) {
	c.cut = -1
	for i := 0; i < len(p); {
		if c.left == 0 {
			n := copy(c.prefix[c.prefixLen:], p[i:])
			c.prefixLen += n
			i += n
			if c.prefixLen == len(c.prefix) {
				c.prefixLen = 0
				c.trailer = c.prefix[0] == 0x80
				c.left = binary.BigEndian.Uint32(c.prefix[1:])
				c.inName = true
			}
			continue
		}
		end := i + int(min(c.left, uint32(len(p)-i))) //nolint:gosec // bounded by len(p)
		if c.trailer {
			c.lowerNames(p, i, end)
		}
		c.left -= uint32(end - i) //nolint:gosec // bounded by c.left
		i = end
	}
	if c.cut < 0 {
		return p, nil
	}
	return p[:c.cut], c.scratch
}

func (c *trailerCaser) lowerNames(p []byte, from, to int) {
	for j := from; j < to; j++ {
		switch b := p[j]; {
		case !c.inName:
			c.inName = b == '\n'
		case b == ':':
			c.inName = false
		case 'A' <= b && b <= 'Z':
			if c.cut < 0 {
				c.cut = j
				c.scratch = append(c.scratch[:0], p[j:]...)
			}
			c.scratch[j-c.cut] = b + ('a' - 'A')
		}
	}
}

// base64Writer encodes a response body in base64 as it is written. Bytes
// short of a whole quantum wait for the next write; a flush pads them out,
// which gRPC-Web text clients decode quantum by quantum.
type base64Writer struct {
	dst     io.Writer
	pending [2]byte
	n       int
	buf     []byte
}

// base64Chunk bounds the encoding buffer: a large message is encoded in
// pieces of this many bytes.
const base64Chunk = 3 << 10

func (b *base64Writer) write(p []byte) error {
	if b.n > 0 {
		var quantum [3]byte
		copy(quantum[:], b.pending[:b.n])
		k := copy(quantum[b.n:], p)
		if b.n+k < 3 {
			b.n += copy(b.pending[b.n:], p)
			return nil
		}
		b.n = 0
		p = p[k:]
		if err := b.emit(quantum[:]); err != nil {
			return err
		}
	}
	whole := len(p) - len(p)%3
	for start := 0; start < whole; start += base64Chunk {
		if err := b.emit(p[start:min(start+base64Chunk, whole)]); err != nil {
			return err
		}
	}
	b.n = copy(b.pending[:], p[whole:])
	return nil
}

func (b *base64Writer) flush() error {
	if b.n == 0 {
		return nil
	}
	n := b.n
	b.n = 0
	return b.emit(b.pending[:n])
}

func (b *base64Writer) emit(p []byte) error {
	if b.buf == nil {
		b.buf = make([]byte, base64.StdEncoding.EncodedLen(base64Chunk))
	}
	out := b.buf[:base64.StdEncoding.EncodedLen(len(p))]
	base64.StdEncoding.Encode(out, p)
	_, err := b.dst.Write(out)
	return err
}

// errBadBase64 is what a text-mode caller gets for a body that is not
// base64.
var errBadBase64 = connect.NewError(connect.CodeInvalidArgument,
	errors.New("invalid application/grpc-web-text body: not base64"))

// base64Body decodes a text-mode request body as it is read. The body may
// be several base64 chunks, each padded, as a client that encodes each
// write on its own sends it; white space between characters is ignored.
type base64Body struct {
	src     io.ReadCloser
	in      []byte // base64 read, not yet decoded: less than a quantum
	out     []byte // decoded, not yet read
	decoded []byte
	err     error
}

func (d *base64Body) Read(p []byte) (int, error) {
	for len(d.out) == 0 {
		if d.err != nil {
			return 0, d.err
		}
		d.fill()
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

func (d *base64Body) Close() error { return d.src.Close() }

// fill reads more of the body and decodes its whole quanta.
func (d *base64Body) fill() {
	if d.in == nil {
		d.in = make([]byte, 0, 4<<10)
		d.decoded = make([]byte, 3<<10)
	}
	n, err := d.src.Read(d.in[len(d.in):cap(d.in)])
	d.in = d.in[:len(d.in)+len(dropSpace(d.in[len(d.in):len(d.in)+n]))]
	whole := len(d.in) - len(d.in)%4
	m, derr := decodeQuanta(d.decoded, d.in[:whole])
	d.out = d.decoded[:m]
	d.in = d.in[:copy(d.in, d.in[whole:])]
	switch {
	case derr != nil:
		d.err = errBadBase64
	case errors.Is(err, io.EOF) && len(d.in) > 0:
		d.err = errBadBase64 // a quantum cut short
	case err != nil:
		d.err = err
	}
}

// dropSpace removes white space from b in place, as base64 decoders do:
// the base64 tool ends its output with a newline.
func dropSpace(b []byte) []byte {
	out := b[:0]
	for _, c := range b {
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			out = append(out, c)
		}
	}
	return out
}

// decodeQuanta decodes whole base64 quanta into dst, allowing padding at
// the end of any quantum: each ends a chunk.
func decodeQuanta(dst, src []byte) (int, error) {
	n := 0
	for len(src) > 0 {
		end := len(src)
		if i := bytes.IndexByte(src, '='); i >= 0 {
			end = (i/4 + 1) * 4
		}
		m, err := base64.StdEncoding.Decode(dst[n:], src[:end])
		n += m
		if err != nil {
			return n, err
		}
		src = src[end:]
	}
	return n, nil
}
