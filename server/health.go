package server

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
)

// healthChecker answers grpc.health.v1.Health and GET /health from the
// health of the upstreams: the gateway serves a service only as well as the
// backend behind it. Results are kept for a second so that health probes
// cannot multiply into load on the backends.
type healthChecker struct {
	checks map[string]func(context.Context) grpchealth.Status // by service name
	order  []string

	// draining is set once shutdown begins.
	draining atomic.Bool

	mu      sync.Mutex
	checked time.Time
	last    map[string]grpchealth.Status
}

func newHealthChecker() *healthChecker {
	return &healthChecker{checks: map[string]func(context.Context) grpchealth.Status{}}
}

func (h *healthChecker) add(service string, check func(context.Context) grpchealth.Status) {
	h.checks[service] = check
	h.order = append(h.order, service)
}

// statuses checks every upstream at most once a second.
func (h *healthChecker) statuses(ctx context.Context) map[string]grpchealth.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	if time.Since(h.checked) < time.Second && h.last != nil {
		return h.last
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	result := make(map[string]grpchealth.Status, len(h.checks))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for service, check := range h.checks {
		wg.Go(func() {
			status := check(ctx)
			mu.Lock()
			result[service] = status
			mu.Unlock()
		})
	}
	wg.Wait()
	h.checked, h.last = time.Now(), result
	return result
}

// Check implements grpchealth.Checker. The empty service is the gateway
// itself: serving until it drains, whatever its upstreams do, so that one
// backend down does not take every gateway out of a load balancer. Each
// service is as healthy as its upstream.
func (h *healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if req.Service == "" {
		if h.draining.Load() {
			return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
		}
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	status, ok := h.statuses(ctx)[req.Service]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, errorText("unknown service "+req.Service))
	}
	return &grpchealth.CheckResponse{Status: status}, nil
}

// healthBody is the seed's health document, with the upstreams' states.
type healthBody struct {
	Status    string            `json:"status"`
	Service   string            `json:"service"`
	Timestamp string            `json:"timestamp"`
	Version   string            `json:"version"`
	Upstreams map[string]string `json:"upstreams"`
}

// serveHTTP answers GET /health. The gateway is "healthy" when every
// upstream serves and "degraded" otherwise; both are 200, so that a load
// balancer does not take every gateway out because one backend is down.
func (h *healthChecker) serveHTTP(version string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeRESTStatus(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		body := healthBody{
			Status:    "healthy",
			Service:   "flowgate",
			Timestamp: time.Now().UTC().Format(time.RFC3339),
			Version:   version,
			Upstreams: map[string]string{},
		}
		for service, status := range h.statuses(r.Context()) {
			body.Upstreams[service] = healthName(status)
			if status != grpchealth.StatusServing {
				body.Status = "degraded"
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(body)
	}
}

func healthName(s grpchealth.Status) string {
	switch s {
	case grpchealth.StatusServing:
		return "serving"
	case grpchealth.StatusNotServing:
		return "not_serving"
	default:
		return "unknown"
	}
}
