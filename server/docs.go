package server

import (
	_ "embed"
	"net/http"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// docsPage is the interactive API reference: a self-contained page (no
// third-party assets, so it works offline and under a strict CSP) that reads
// the OpenAPI document and lets a user send requests and watch streams.
//
//go:embed docs/index.html
var docsPage []byte

// mountDocs serves GET /docs and the OpenAPI document it reads at
// /openapi.json (and /api/v1/openapi.json).
func mountDocs(mux *http.ServeMux, version string) error {
	var descs []protoreflect.ServiceDescriptor
	for _, svc := range services() {
		descs = append(descs, svc.desc)
	}
	spec, err := openAPI(version, descs)
	if err != nil {
		return err
	}
	serve := func(contentType string, body []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				w.Header().Set("Allow", "GET, HEAD")
				writeRESTStatus(w, http.StatusMethodNotAllowed, "use GET")
				return
			}
			w.Header().Set("Content-Type", contentType)
			w.Header().Set("X-Content-Type-Options", "nosniff")
			_, _ = w.Write(body)
		}
	}
	mux.Handle("/docs", serve("text/html; charset=utf-8", docsPage))
	mux.Handle("/openapi.json", serve("application/json", spec))
	mux.Handle("/api/v1/openapi.json", serve("application/json", spec))
	return nil
}
