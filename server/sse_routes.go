package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
	"github.com/flowgate/flowgate/sse"
)

// SSEConfig tunes the Server-Sent Events routes.
type SSEConfig struct {
	// Heartbeat is the interval of comment heartbeats (default 15s; negative
	// disables them).
	Heartbeat time.Duration
	// Retry is the reconnection delay advised to browsers (0: none sent).
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

// mountSSE registers the SSE routes on mux. Each stream is served by calling
// rpc in process, so the RPC path's interceptors (auth, rate limits,
// logging) apply once, exactly as for any other protocol; wrap adds the
// browser credential handling the SSE routes need (may be nil).
func mountSSE(mux *http.ServeMux, rpc http.Handler, cfg SSEConfig, wrap func(http.Handler) http.Handler, logger *slog.Logger) error {
	if wrap == nil {
		wrap = func(h http.Handler) http.Handler { return h }
	}
	for _, route := range sseRoutes {
		bridge, err := sse.New(sse.Config{
			RPC:          rpc,
			Procedure:    route.procedure,
			EventIDField: route.eventID,
			ResumeField:  route.resume,
			Heartbeat:    cfg.Heartbeat,
			Retry:        cfg.Retry,
			Logger:       logger,
		})
		if err != nil {
			return fmt.Errorf("mount SSE route %q: %w", route.pattern, err)
		}
		mux.Handle(route.pattern, wrap(bridge))
	}
	return nil
}
