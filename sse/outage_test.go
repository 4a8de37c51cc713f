package sse

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// outageEvent reads a stream that must be a 200 with retry advice and a
// single error event, and returns the advice and the event's error.
func outageEvent(t *testing.T, resp *http.Response) (retry string, ce contractError) {
	t.Helper()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("%d %q %q, want a 200 event stream", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	events := readEvents(t, resp.Body, nil)
	if len(events) != 2 || events[0].name != "retry" || events[1].name != "error" {
		t.Fatalf("events %+v, want retry advice and one error event", events)
	}
	if err := json.Unmarshal([]byte(events[1].data), &ce); err != nil {
		t.Fatalf("error event %q: %v", events[1].data, err)
	}
	return events[0].data, ce
}

// An unavailable upstream before the first event is a 200 stream with
// retry advice and a retryable error event: on a 502 EventSource would
// never reconnect.
func TestUnavailableBeforeFirstEventKeepsReconnecting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		retry time.Duration
		want  string
	}{{0, "3000"}, {1200 * time.Millisecond, "1200"}} {
		forEachProtocol(t, func(t *testing.T, get getFunc) {
			_, srv, _ := newBridge(t, Config{Retry: tc.retry})
			retry, ce := outageEvent(t, get(t, srv.URL+"?session_id=s&count=0&fail_code=unavailable", nil))
			if retry != tc.want || ce.Error.Code != "BAD_GATEWAY" || ce.Error.Message != "upstream service unavailable" {
				t.Errorf("retry %q, error %+v; want retry %s and BAD_GATEWAY without the upstream's text", retry, ce.Error, tc.want)
			}
		})
	}
}

// A rate-limited stream says when to come back in a way EventSource
// follows: a 200 stream whose last retry advice is no sooner than the
// limit's Retry-After, and the RATE_LIMITED error for the page to show.
// On a 429 EventSource would stop for good, and a page cannot read why.
func TestRateLimitedStreamSaysWhenToRetry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		retry      time.Duration
		retryAfter string
		want       []string // the retry fields, in order
	}{
		{"default advice is longer", 0, "2", []string{"3000"}},
		{"the limit's is longer", 0, "7", []string{"7000"}},
		{"the bridge's is longer", 10 * time.Second, "7", []string{"10000"}},
		{"the bridge's is shorter", time.Second, "7", []string{"1000", "7000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachProtocol(t, func(t *testing.T, get getFunc) {
				_, srv, _ := newBridge(t, Config{Retry: tc.retry})
				resp := get(t, srv.URL+"?session_id=s&count=0&fail_code=resource_exhausted&tags=retry-after%3D"+tc.retryAfter, nil)
				body, _ := io.ReadAll(resp.Body)
				events := readEvents(t, strings.NewReader(string(body)), nil)
				var retries []string
				var ce contractError
				for _, e := range events {
					switch e.name {
					case "retry":
						retries = append(retries, e.data)
					case "error":
						_ = json.Unmarshal([]byte(e.data), &ce)
					}
				}
				if resp.StatusCode != http.StatusOK || strings.Join(retries, ",") != strings.Join(tc.want, ",") ||
					ce.Error.Code != "RATE_LIMITED" || !strings.Contains(ce.Error.Message, "resource_exhausted") ||
					events[len(events)-1].name != "error" {
					t.Errorf("got %d %q, want a 200 stream with retry %v and a RATE_LIMITED error event", resp.StatusCode, body, tc.want)
				}
			})
		})
	}
}

// A resumed stream sends its headers as soon as the handler takes the
// request, not when the first event or heartbeat comes.
func TestResumedStreamCommitsAtOnce(t *testing.T) {
	t.Parallel()
	for _, protocol := range protocols {
		t.Run(protocol, func(t *testing.T) {
			t.Parallel()
			ts, srv, _ := newBridge(t, Config{EventIDField: "tick_id", ResumeField: "after_id", Heartbeat: time.Hour, Retry: time.Second})
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"?session_id=s&count=0&block=true", nil)
			req.Header.Set("Last-Event-ID", "7")
			resp, err := newClient(t, protocol).Do(req)
			if err != nil {
				t.Fatalf("no headers for a resumed stream: %v", err)
			}
			defer resp.Body.Close()
			events := readEvents(t, resp.Body, func(event) bool { return true })
			if resp.StatusCode != http.StatusOK || len(events) != 1 || events[0].name != "retry" || events[0].data != "1000" {
				t.Errorf("resumed stream: %d %+v", resp.StatusCode, events)
			}
			req2 := <-ts.requests
			if after := req2.Get(tickMethod(t).Input().Fields().ByName("after_id")).String(); after != "7" {
				t.Errorf("the handler resumes after %q, want 7", after)
			}
		})
	}
}

// Once the server shuts down, a stream whose call ends as unavailable is
// told the truth, and new streams are turned away with the same
// retryable event instead of reaching the handler.
func TestShutdownTellsStreamsWhy(t *testing.T) {
	t.Parallel()
	forEachProtocol(t, func(t *testing.T, get getFunc) {
		ts, srv, b := newBridge(t, Config{})
		resp := get(t, srv.URL+"?session_id=s&count=2&interval_ms=300&fail_code=unavailable", nil)
		readEvents(t, resp.Body, func(e event) bool { return e.name == "" })
		b.BeginShutdown()
		events := readEvents(t, resp.Body, nil)
		last := events[len(events)-1]
		if last.name != "error" || !strings.Contains(last.data, `"message":"the gateway is shutting down; reconnect"`) || !strings.Contains(last.data, `"code":"BAD_GATEWAY"`) {
			t.Errorf("stream ended with %+v, want the shutdown error", events)
		}
		<-ts.requests
		retry, ce := outageEvent(t, get(t, srv.URL+"?session_id=s&count=1", nil))
		if retry != "3000" || ce.Error.Message != "the gateway is shutting down; reconnect" {
			t.Errorf("stream opened during shutdown: retry %q error %+v", retry, ce.Error)
		}
		select {
		case <-ts.requests:
			t.Error("a stream opened during shutdown reached the handler")
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := b.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Error(err)
		}
	})
}
