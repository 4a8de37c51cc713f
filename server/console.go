package server

import (
	"net/http"

	"github.com/flowgate/flowgate/server/console"
)

// mountConsole serves the web console at "/" and its assets under
// /console/. Only GET (and HEAD) of exactly "/" is the console's: every
// other method and path under "/" stays the transcoder's.
func mountConsole(mux *http.ServeMux, sseCookie string) error {
	c, err := console.New(console.Config{SSECookie: sseCookie})
	if err != nil {
		return err
	}
	mux.Handle("GET /{$}", c.Page())
	mux.Handle("GET "+console.AssetPrefix, c.Assets())
	return nil
}
