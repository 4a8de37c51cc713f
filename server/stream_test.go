package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/agent/v1/agentv1connect"
)

func TestServerStreamForwarding(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, p.opts...)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			start := time.Now()
			stream, err := client.Chat(ctx, connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "m"}))
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if !stream.Receive() {
					t.Fatalf("stream ended early: %v", stream.Err())
				}
				if want := "m" + string(rune('a'+i)); stream.Msg().GetContent() != want {
					t.Errorf("message %d = %q, want %q", i, stream.Msg().GetContent(), want)
				}
			}
			// The backend sends one message every 100ms for 5s: three arriving
			// within a second means they were relayed as they came.
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("first messages took %v: the stream was buffered", elapsed)
			}
			if stream.ResponseHeader().Get("X-Stream-Header") != "s" {
				t.Errorf("stream header lost: %v", stream.ResponseHeader())
			}
			cancel()
			select {
			case <-b.agent.canceled:
			case <-time.After(time.Second):
				t.Error("the backend did not see the cancellation within a second")
			}
		})
	}
}

func TestServerStreamUpstreamError(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)
	for _, p := range rpcProtocols {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			client := agentv1connect.NewWorkflowAgentServiceClient(h2cClient(t), url, p.opts...)
			stream, err := client.Chat(t.Context(), connect.NewRequest(&agentv1.ChatRequest{SessionId: "s", UserMessage: "fail"}))
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for stream.Receive() {
				n++
			}
			if n != 2 {
				t.Errorf("got %d messages before the error, want 2", n)
			}
			if connect.CodeOf(stream.Err()) != connect.CodeInternal || !strings.Contains(stream.Err().Error(), "model went away") {
				t.Errorf("stream error = %v", stream.Err())
			}
		})
	}
}
