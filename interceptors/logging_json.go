package interceptors

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// NewJSONHandler returns a handler that writes what slog.NewJSONHandler(w,
// opts) writes. An [AccessLog] on a logger with this handler (not one
// derived from it with attributes or groups, which would change the line)
// encodes its lines itself, in the same bytes: slog's record, its caller
// lookup and its per-attribute work cost more than the rest of the log
// line, and the access log writes one per call. Options slog applies to
// each attribute (ReplaceAttr, AddSource) leave the lines to slog.
func NewJSONHandler(w io.Writer, opts *slog.HandlerOptions) slog.Handler {
	if opts == nil {
		opts = &slog.HandlerOptions{}
	}
	lw := &lockedWriter{w: w}
	h := &jsonHandler{Handler: slog.NewJSONHandler(lw, opts), out: lw, level: opts.Level}
	if h.level == nil {
		h.level = slog.LevelInfo
	}
	h.direct = opts.ReplaceAttr == nil && !opts.AddSource
	return h
}

// jsonHandler is slog's JSON handler, plus what the access log needs to
// write the same lines without it. Its WithAttrs and WithGroup are slog's,
// so a derived logger is slog's handler alone.
type jsonHandler struct {
	slog.Handler
	out    *lockedWriter
	level  slog.Leveler
	direct bool
}

// lockedWriter keeps slog's lines and the access log's whole: both write
// through it, one line per Write.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// directJSON returns the handler whose lines the access log may encode
// itself, or nil.
func directJSON(logger *slog.Logger) *jsonHandler {
	h, ok := logger.Handler().(*jsonHandler)
	if !ok || !h.direct {
		return nil
	}
	return h
}

// enabled is slog's JSON handler's Enabled, without the interface call.
func (h *jsonHandler) enabled(level slog.Level) bool {
	return level >= h.level.Level()
}

var lineBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledLine keeps a line with a huge error message from pinning its
// buffer in the pool.
const maxPooledLine = 16 << 10

// line returns a buffer for a line, and the line's time.
func (h *jsonHandler) line() (*[]byte, time.Time) {
	return lineBufs.Get().(*[]byte), time.Now()
}

func (h *jsonHandler) write(line *[]byte) {
	_, _ = h.out.Write(*line)
	if cap(*line) <= maxPooledLine {
		*line = (*line)[:0]
		lineBufs.Put(line)
	}
}

// appendLineStart appends what slog writes before a record's attributes.
func appendLineStart(b []byte, t time.Time, level slog.Level, msg string) []byte {
	b = append(b, `{"time":"`...)
	b = t.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":`...)
	b = appendJSONString(b, level.String())
	b = append(b, `,"msg":`...)
	return appendJSONString(b, msg)
}

// appendRPCLine appends the access log's line for an RPC, as slog's JSON
// handler writes it; errMsg is written when hasErr.
func appendRPCLine(b []byte, t time.Time, level slog.Level, procedure, protocol, code string, d time.Duration, requestID, peer string, hasErr bool, errMsg string) []byte {
	b = appendLineStart(b, t, level, "rpc")
	b = append(b, `,"procedure":`...)
	b = appendJSONString(b, procedure)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, protocol)
	b = append(b, `,"code":`...)
	b = appendJSONString(b, code)
	b = appendLineEnd(b, d, requestID, peer)
	if hasErr {
		b = append(b, `,"error":`...)
		b = appendJSONString(b, errMsg)
	}
	return append(b, "}\n"...)
}

// appendHTTPLine appends the access log's line for a request no RPC
// logged, as slog's JSON handler writes it.
func appendHTTPLine(b []byte, t time.Time, level slog.Level, method, path, protocol string, status int, d time.Duration, requestID, peer string) []byte {
	b = appendLineStart(b, t, level, "http")
	b = append(b, `,"method":`...)
	b = appendJSONString(b, method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, path)
	b = append(b, `,"protocol":`...)
	b = appendJSONString(b, protocol)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = appendLineEnd(b, d, requestID, peer)
	return append(b, "}\n"...)
}

// appendLineEnd appends the fields both lines end with.
func appendLineEnd(b []byte, d time.Duration, requestID, peer string) []byte {
	b = append(b, `,"duration":`...)
	b = strconv.AppendInt(b, int64(d), 10)
	b = append(b, `,"request_id":`...)
	b = appendJSONString(b, requestID)
	b = append(b, `,"peer":`...)
	return appendJSONString(b, peer)
}

// jsonPlain marks the bytes a JSON string holds as they are: ASCII
// other than control characters, '"' and '\\'.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s quoted as slog's JSON handler quotes it:
// control characters, quotes and backslashes escaped, invalid UTF-8 as
// \ufffd, U+2028 and U+2029 escaped (they end a line in JavaScript), and
// unlike encoding/json's default, <, > and & as they are.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Runs of plain ASCII, most of every line, cost a table lookup a
		// byte.
		for i < len(s) && jsonPlain[s[i]] {
			i++
		}
		if i == len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// enabledJSON reports whether a line at level is written, and through
// which path: json is non-nil when the access log encodes it itself.
func (a *AccessLog) enabledJSON(ctx context.Context, level slog.Level) (json *jsonHandler, ok bool) {
	if a.json != nil {
		return a.json, a.json.enabled(level)
	}
	return nil, a.logger.Enabled(ctx, level)
}
