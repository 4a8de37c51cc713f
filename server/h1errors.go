package server

import (
	"bytes"
	"net"
	"net/http"
	"strconv"

	"github.com/flowgate/flowgate/internal/apierr"
)

// net/http's HTTP/1.x server answers some requests by itself, before any
// handler runs: a head over MaxHeaderBytes (431), a malformed request
// (400), an unsupported transfer coding (501) or protocol version (505).
// It writes those answers as plain text straight to the connection, in one
// write of a fixed form:
//
//	HTTP/1.1 <code> <reason>[: <text>]\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n<body>
//
// The contract promises every caller an error in its JSON shape, so the
// connections net/http serves over HTTP/1.x pass their writes through
// contractAnswer, which rewrites that form and nothing else. No response
// of a handler can match it: net/http writes those through its own
// writer, with a Date header after the status line, and the form must fill
// the write exactly.
const netHTTPErrorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// contractAnswer returns the contract's form of p if p is one of net/http's
// own plain-text answers.
func contractAnswer(p []byte) ([]byte, bool) {
	const proto = "HTTP/1.1 "
	if len(p) < len(proto)+3 || string(p[:len(proto)]) != proto || p[len(proto)] != '4' && p[len(proto)] != '5' {
		return nil, false
	}
	// The status line is short; a response's body is not searched.
	end := bytes.Index(p[:min(len(p), 256)], []byte("\r\n"))
	if end < 0 || !bytes.HasPrefix(p[end:], []byte(netHTTPErrorHeaders)) {
		return nil, false
	}
	statusLine := p[:end]
	code, err := strconv.Atoi(string(statusLine[len(proto) : len(proto)+3]))
	if err != nil {
		return nil, false
	}
	// The write is the whole answer, its body the status line's words (or,
	// for 501, net/http's fixed sentence): a response body that happens to
	// start a write with the same head does not qualify.
	body := string(p[end+len(netHTTPErrorHeaders):])
	if body != string(statusLine[len(proto):]) && (code != http.StatusNotImplemented || body != "Unsupported transfer encoding") {
		return nil, false
	}
	msg := ""
	if _, text, found := bytes.Cut(statusLine, []byte(": ")); found {
		msg = string(text) // net/http's own words ("missing required Host header")
	}
	if msg == "" {
		switch code {
		case http.StatusRequestHeaderFieldsTooLarge:
			msg = "request headers too large"
		case http.StatusNotImplemented:
			msg = "unsupported transfer encoding"
		default:
			msg = "malformed HTTP request"
		}
	}
	e := apierr.New(code, msg)
	if code == http.StatusHTTPVersionNotSupported {
		e.Code = "VALIDATION_ERROR" // the caller's request, not the gateway, is at fault
	}
	errBody := e.JSON()
	out := make([]byte, 0, 256+len(errBody))
	out = append(out, proto...)
	out = strconv.AppendInt(out, int64(code), 10)
	out = append(out, ' ')
	out = append(out, http.StatusText(code)...)
	out = append(out, "\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"...)
	out = append(out, "X-Request-Id: "...)
	out = append(out, newRequestID()...)
	out = append(out, "\r\nContent-Length: "...)
	out = strconv.AppendInt(out, int64(len(errBody)), 10)
	out = append(out, "\r\nConnection: close\r\n\r\n"...)
	return append(out, errBody...), true
}

// contractErrorsListener passes every connection it accepts through
// contractAnswer, for a server that serves HTTP/1.x on it with no
// connection splitter in front.
type contractErrorsListener struct{ net.Listener }

func (l contractErrorsListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &replayConn{Conn: conn, h1: true}, nil
}
