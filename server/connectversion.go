package server

import (
	"net/http"
	"strings"
)

// connectVersionDefault gives a POST to one of procedures whose body is a
// Connect unary message (an application/* content type other than gRPC's,
// gRPC-Web's and Connect streaming's) the Connect-Protocol-Version header
// when it has none. The Connect protocol lets clients leave the header
// out, connect-go serves such calls, and Connect's own curl examples do;
// the transcoder takes a request without it for REST, and a procedure's
// path is no REST route, so the call ended in a 404 "no route". REST
// routes live under other paths, so nothing else changes meaning.
func connectVersionDefault(procedures map[string]bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && procedures[r.URL.Path] && r.Header["Connect-Protocol-Version"] == nil &&
			connectUnaryType(r.Header["Content-Type"]) {
			r.Header["Connect-Protocol-Version"] = []string{"1"}
		}
		next.ServeHTTP(w, r)
	})
}

// connectUnaryType reports a single content type that a Connect unary
// call may carry.
func connectUnaryType(types []string) bool {
	if len(types) != 1 {
		return false
	}
	ct := strings.ToLower(types[0])
	return strings.HasPrefix(ct, "application/") && !strings.HasPrefix(ct, "application/grpc") &&
		!strings.HasPrefix(ct, "application/connect+")
}
