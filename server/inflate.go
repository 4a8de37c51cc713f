package server

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"connectrpc.com/connect"
)

// The inflate guard decompresses gzip requests at the edge, before
// authentication, rate limits and the transcoder, reading at most the body
// limit of inflated bytes: a small compressed body cannot make the gateway
// inflate more than that, whatever its protocol. Downstream everything
// sees an uncompressed request. The transcoder's own decompression, run
// later, holds every inflated message in memory before looking at its
// size, and is not reached by compressed requests any more.
//
// Whole bodies (REST, Connect unary) are compressed by Content-Encoding;
// enveloped messages (gRPC, gRPC-Web, Connect streaming) one by one, as
// Grpc-Encoding or Connect-Content-Encoding and each envelope's flag say.
// Encodings other than gzip are left to the protocol handlers, which
// refuse them. gRPC-Web's base64 text mode is not enveloped in bytes the
// guard can read and is left alone as well.

// errInflatedTooLarge is returned when a request inflates past the limit.
var errInflatedTooLarge = errors.New("inflated past the limit")

// inflateChunk is the unit the guard collects inflated bytes in, so that a
// body growing towards the limit is never copied into a larger slice.
const inflateChunk = 32 << 10

var gzipReaders sync.Pool

// inflateRequest replaces a gzip-compressed request body by its inflated
// form and removes the encoding headers. It answers the request itself
// (and returns false) when the body inflates past the limit or is not
// valid gzip.
func (s *security) inflateRequest(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return r, true
	}
	if name, ok := envelopeEncodingHeader(headerValue(r.Header, "Content-Type")); ok {
		if !isGzip(r.Header.Get(name)) {
			return r, true
		}
		return s.inflateEnvelopes(w, r, name)
	}
	if !isGzip(headerValue(r.Header, "Content-Encoding")) {
		return r, true
	}
	chunks, err := inflateBounded(r.Body, s.cfg.MaxBodyBytes)
	_ = r.Body.Close()
	if err != nil {
		s.inflateFailed(w, r, err)
		return r, false
	}
	r.Body = chunks
	r.ContentLength = chunks.size
	r.Header.Del("Content-Encoding")
	r.Header.Set("Content-Length", strconv.FormatInt(chunks.size, 10))
	return r, true
}

// envelopeEncodingHeader names the header giving the compression of an
// enveloped request's messages, for the protocols that envelope them.
func envelopeEncodingHeader(contentType string) (string, bool) {
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web-text"):
		return "", false
	case strings.HasPrefix(contentType, "application/grpc"):
		return "Grpc-Encoding", true
	case strings.HasPrefix(contentType, "application/connect+"):
		return "Connect-Content-Encoding", true
	}
	return "", false
}

func isGzip(encoding string) bool {
	return strings.EqualFold(strings.TrimSpace(encoding), "gzip")
}

// inflateEnvelopes rewrites the request's messages uncompressed as they are
// read. The first message is inflated now, so that a bomb in it (the only
// message of unary and server-streaming calls) gets its answer here; a
// later one fails the read, which the handler reports to the caller.
// Waiting for the first message here would stall a compressing caller
// that waits for response headers before it sends; no procedure the
// gateway serves works that way.
func (s *security) inflateEnvelopes(w http.ResponseWriter, r *http.Request, header string) (*http.Request, bool) {
	in := &envelopeInflater{src: r.Body, limit: min(s.cfg.MaxBodyBytes, math.MaxUint32)}
	if err := in.next(); err != nil && !errors.Is(err, io.EOF) {
		_ = r.Body.Close()
		s.inflateFailed(w, r, err)
		return r, false
	}
	r.Body = in
	r.ContentLength = -1
	r.Header.Del(header)
	r.Header.Del("Content-Length")
	return r, true
}

func (s *security) inflateFailed(w http.ResponseWriter, r *http.Request, err error) {
	fallback := "could not read the request body"
	if isCorruptGzip(err) {
		fallback = "request body is not valid gzip"
	}
	s.bodyFailed(w, r, err, fallback)
}

func isCorruptGzip(err error) bool {
	var corrupt flate.CorruptInputError
	return errors.As(err, &corrupt) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// inflateBounded inflates the gzip stream src, failing with
// errInflatedTooLarge as soon as it yields more than limit bytes.
func inflateBounded(src io.Reader, limit int64) (*chunkBody, error) {
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(src)
	} else {
		err = zr.Reset(src)
	}
	if err != nil {
		return nil, err
	}
	defer gzipReaders.Put(zr)
	return readChunks(zr, limit)
}

// readChunks reads src to its end into chunks, or fails with
// errInflatedTooLarge once it has read more than limit bytes.
func readChunks(src io.Reader, limit int64) (*chunkBody, error) {
	body := &chunkBody{}
	for {
		chunk, _ := inflateChunks.Get().(*[inflateChunk]byte)
		if chunk == nil {
			chunk = new([inflateChunk]byte)
		}
		body.chunks = append(body.chunks, chunk)
		n, err := io.ReadFull(src, chunk[:min(inflateChunk, limit+1-body.size)])
		body.size += int64(n)
		switch {
		case body.size > limit:
			body.release()
			return nil, errInflatedTooLarge
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return body, nil
		case err != nil:
			body.release()
			return nil, err
		}
	}
}

// inflateChunks recycles chunks: a bomb's are reused by the next request
// rather than left for the collector, and a body's go back as soon as
// they are read.
var inflateChunks sync.Pool

// chunkBody is an inflated body served from its chunks.
type chunkBody struct {
	chunks []*[inflateChunk]byte
	size   int64
	off    int64 // bytes read so far
}

func (b *chunkBody) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && b.off < b.size {
		i, at := b.off/inflateChunk, b.off%inflateChunk
		end := min(inflateChunk, b.size-i*inflateChunk)
		c := copy(p[n:], b.chunks[i][at:end])
		n += c
		b.off += int64(c)
		if at+int64(c) == end {
			inflateChunks.Put(b.chunks[i])
			b.chunks[i] = nil
		}
	}
	if n == 0 && len(p) > 0 {
		b.release()
		return 0, io.EOF
	}
	return n, nil
}

// Close returns the chunks not read.
func (b *chunkBody) Close() error {
	b.release()
	return nil
}

func (b *chunkBody) release() {
	for i, c := range b.chunks {
		if c != nil {
			inflateChunks.Put(c)
			b.chunks[i] = nil
		}
	}
	b.off = b.size
}

// envelopeInflater reads enveloped messages from src and yields them with
// compressed messages inflated and flagged uncompressed.
type envelopeInflater struct {
	src     io.ReadCloser
	limit   int64
	pending io.Reader // the rest of the current message, prefix included
	err     error
}

func (e *envelopeInflater) Read(p []byte) (int, error) {
	for {
		if e.pending != nil {
			n, err := e.pending.Read(p)
			if errors.Is(err, io.EOF) {
				e.pending, err = nil, nil
			}
			if n > 0 || err != nil {
				return n, err
			}
		}
		if err := e.next(); err != nil {
			if errors.Is(err, errInflatedTooLarge) {
				err = connect.NewError(connect.CodeResourceExhausted,
					fmt.Errorf("request message exceeds %d bytes once decompressed", e.limit))
			}
			return 0, err
		}
	}
}

func (e *envelopeInflater) Close() error { return e.src.Close() }

// next reads the next message from src into pending.
func (e *envelopeInflater) next() error {
	if e.err != nil {
		return e.err
	}
	var prefix [5]byte
	if _, e.err = io.ReadFull(e.src, prefix[:]); e.err != nil {
		return e.err
	}
	size := int64(binary.BigEndian.Uint32(prefix[1:]))
	payload := io.LimitReader(e.src, size)
	if prefix[0]&1 == 0 {
		e.pending = io.MultiReader(bytes.NewReader(prefix[:]), payload)
		return nil
	}
	msg, err := inflateBounded(payload, e.limit)
	if err != nil {
		e.err = err
		return err
	}
	// Whatever follows the gzip stream inside the message is dropped, so
	// that the next prefix is read where it starts.
	if _, e.err = io.Copy(io.Discard, payload); e.err != nil {
		return e.err
	}
	prefix[0] &^= 1
	binary.BigEndian.PutUint32(prefix[1:], uint32(msg.size)) //nolint:gosec // at most the body limit
	e.pending = io.MultiReader(bytes.NewReader(prefix[:]), msg)
	return nil
}
