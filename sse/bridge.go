package sse

import "net/http"

// ServeHTTP serves one stream.
func (b *Bridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	writeHTTPError(w, http.StatusNotImplemented, "INTERNAL_ERROR", "stream not available yet")
}

func writeHTTPError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(`{"error":{"code":"` + code + `","message":"` + message + `"}}`))
}
