package server

import (
	"encoding/json"
	"net/http"

	"connectrpc.com/grpchealth"
)

// probeBody is the document of /livez and /readyz: a status, why when not
// ready, and the upstreams' states.
type probeBody struct {
	Status    string            `json:"status"`
	Reason    string            `json:"reason,omitempty"`
	Upstreams map[string]string `json:"upstreams,omitempty"`
}

// serveLive answers /livez: 200 as long as the process serves HTTP at all.
// It checks nothing else, so that an orchestrator restarts the gateway
// only when restarting can help.
func serveLive() http.HandlerFunc {
	return probe(func(*http.Request) (int, probeBody) {
		return http.StatusOK, probeBody{Status: "alive"}
	})
}

// serveReady answers /readyz: 503 while the gateway drains or an upstream
// does not answer its health check, 200 otherwise. Upstream checks share
// the health endpoints' one-second cache.
func (h *healthChecker) serveReady() http.HandlerFunc {
	return probe(func(r *http.Request) (int, probeBody) {
		if h.draining.Load() {
			return http.StatusServiceUnavailable, probeBody{Status: "not_ready", Reason: "the gateway is shutting down"}
		}
		body := probeBody{Status: "ready", Upstreams: map[string]string{}}
		var down []string
		for _, service := range h.order {
			status := h.statuses(r.Context())[service]
			body.Upstreams[service] = healthName(status)
			if status != grpchealth.StatusServing {
				down = append(down, service)
			}
		}
		if len(down) > 0 {
			body.Status, body.Reason = "not_ready", "upstream not serving: "+joinNames(down)
			return http.StatusServiceUnavailable, body
		}
		return http.StatusOK, body
	})
}

// probe serves GET and HEAD with the JSON document check returns.
func probe(check func(*http.Request) (int, probeBody)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeRESTStatus(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		status, body := check(r)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	}
}

func joinNames(names []string) string {
	out := names[0]
	for _, n := range names[1:] {
		out += ", " + n
	}
	return out
}
