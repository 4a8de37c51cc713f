package server

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"net/http"
)

const requestIDHeader = "X-Request-Id"

// requestID makes sure every request carries an X-Request-Id, keeping the
// caller's when it is a sane token and minting one otherwise, and echoes it
// on the response so that callers can quote it.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ensureRequestID(r.Header, w.Header())
		next.ServeHTTP(w, r)
	})
}

// ensureRequestID gives a request its id, the caller's or a new one, and
// echoes it in the response headers; gRPC callers served by grpc-go get
// theirs here too.
func ensureRequestID(req, res http.Header) {
	vals := req[requestIDHeader]
	if len(vals) == 0 || !validRequestID(vals[0]) {
		vals = []string{newRequestID()}
		req[requestIDHeader] = vals
	}
	// The response shares the request's slice: it is never written in
	// place, and an append to it copies (its capacity is its length).
	res[requestIDHeader] = vals[:1:1]
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// newRequestID returns 128 random bits in hex. Request ids must be unique,
// not secret: the runtime's fast generator serves, where crypto/rand would
// cost a system call on every request.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	var out [32]byte
	return string(hex.AppendEncode(out[:0], b[:]))
}
