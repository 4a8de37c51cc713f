package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/sse"
)

// SSEConfig tunes the Server-Sent Events routes.
type SSEConfig struct {
	// Heartbeat is the interval of comment heartbeats (default 15s; negative
	// disables them).
	Heartbeat time.Duration
	// Retry is the reconnection delay advised to browsers (0: none, but
	// sse.DefaultRetry with a retryable error).
	Retry time.Duration
}

// sseRoute binds a contract path to the agent's server-streaming procedure.
type sseRoute struct {
	pattern   string
	procedure string
	eventID   string
	resume    string
}

var sseRoutes = []sseRoute{
	{
		pattern:   "GET /api/v1/chat/stream",
		procedure: agentv1connect.WorkflowAgentServiceChatProcedure,
	},
	{
		// Generation events carry their own ids, and the agent keeps the
		// log, so Last-Event-ID resumes exactly after the last event seen.
		pattern:   "GET /api/v1/workflow_generation",
		procedure: agentv1connect.WorkflowAgentServiceWatchGenerationProcedure,
		eventID:   "event_id",
		resume:    "after_event_id",
	},
}

// ssePaths are the SSE routes' paths: the access log names their protocol.
var ssePaths = func() map[string]bool {
	paths := make(map[string]bool, len(sseRoutes))
	for _, route := range sseRoutes {
		paths[route.path()] = true
	}
	return paths
}()

// path is the route's path, without its method.
func (r sseRoute) path() string {
	_, path, _ := strings.Cut(r.pattern, " ")
	return path
}

// mountSSE registers the SSE routes on mux. Each stream is served by the
// procedure's forwarder, called in process through the same interceptors
// (auth, rate limits, logging) as the procedure over any other protocol;
// wrap adds the browser credential handling the SSE routes need (may be
// nil). It returns the bridges, which the gateway shuts down.
func mountSSE(mux *http.ServeMux, streams map[string]connect.StreamingHandlerFunc, chain []connect.Interceptor, cfg SSEConfig, wrap func(http.Handler) http.Handler, logger *slog.Logger) ([]*sse.Bridge, error) {
	if wrap == nil {
		wrap = func(h http.Handler) http.Handler { return h }
	}
	bridges := make([]*sse.Bridge, 0, len(sseRoutes))
	for _, route := range sseRoutes {
		handler, ok := streams[route.procedure]
		if !ok {
			return nil, fmt.Errorf("mount SSE route %q: no forwarder for %s", route.pattern, route.procedure)
		}
		bridge, err := sse.New(sse.Config{
			Handler:      intercept(chain, handler),
			Codec:        passthroughCodec{},
			Procedure:    route.procedure,
			EventIDField: route.eventID,
			ResumeField:  route.resume,
			Heartbeat:    cfg.Heartbeat,
			Retry:        cfg.Retry,
			// Services read streams with an API key rather than a token.
			ForwardHeaders: append(slices.Clone(sse.DefaultForwardHeaders), interceptors.HeaderAPIKey),
			Logger:         logger,
		})
		if err != nil {
			return nil, fmt.Errorf("mount SSE route %q: %w", route.pattern, err)
		}
		mux.Handle(route.pattern, wrap(bridge))
		bridges = append(bridges, bridge)
	}
	return bridges, nil
}

// refuseStreams answers the SSE request of a connection refused at the
// per-address cap on its route's bridge, which EventSource retries;
// bridges are as mountSSE returns them.
func refuseStreams(bridges []*sse.Bridge) streamRefusal {
	byPath := make(map[string]*sse.Bridge, len(bridges))
	for i, route := range sseRoutes {
		byPath[route.path()] = bridges[i]
	}
	return func(w http.ResponseWriter, r *http.Request, err error) bool {
		b := byPath[r.URL.Path]
		if b == nil || r.Method != http.MethodGet {
			return false
		}
		b.Refuse(w, err)
		return true
	}
}

// intercept wraps h in chain as connect.WithInterceptors does: the first
// interceptor is the outermost.
func intercept(chain []connect.Interceptor, h connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	for i := len(chain) - 1; i >= 0; i-- {
		if chain[i] != nil {
			h = chain[i].WrapStreamingHandler(h)
		}
	}
	return h
}
