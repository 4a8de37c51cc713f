package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
)

// Event types of a generation, in the order they usually come.
const (
	eventWaiting   = "waiting"
	eventStart     = "start"
	eventDraft     = "draft"
	eventDebugging = "debugging"
	eventComplete  = "complete"
	eventError     = "error"
)

func terminal(typ string) bool { return typ == eventComplete || typ == eventError }

// appendEvent stores an event of the session and wakes its watchers.
func (s *Service) appendEvent(ctx context.Context, key sessionKey, typ, workflowID string, data map[string]any) (int64, error) {
	raw := ""
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return 0, fmt.Errorf("encode %s event: %w", typ, err)
		}
		raw = string(b)
	}
	id, err := s.store.appendEvent(ctx, key, storedEvent{typ: typ, workflowID: workflowID, data: raw})
	if err != nil {
		return 0, err
	}
	s.hub.notify(key)
	return id, nil
}

// WatchGeneration streams the session's generation events after
// after_event_id: the stored log first, then new events as they are
// appended. It ends after a complete or error event that nothing follows
// (no generation pending); a watcher that resumes after such an event waits
// for the next generation.
func (s *Service) WatchGeneration(ctx context.Context, req *connect.Request[agentv1.WatchGenerationRequest], stream *connect.ServerStream[agentv1.WatchGenerationResponse]) error {
	id := identityOf(req.Header())
	after, err := parseEventID(req.Msg.GetAfterEventId())
	if err != nil {
		return err
	}
	sess, err := s.openSession(ctx, id, req.Msg.GetSessionId())
	if err != nil {
		return err
	}
	t := s.hub.watch(sess.key)
	defer s.hub.release(t)
	var poll *time.Timer
	if s.poll > 0 {
		poll = time.NewTimer(s.poll)
		defer poll.Stop()
	}
	w := &watch{s: s, t: t, stream: stream, after: after}
	if err := w.catchUp(ctx); err != nil {
		return err
	}
	for {
		events, changed, covered, err := t.next(ctx, s.hub, w.after, s.poll)
		if err != nil {
			return w.readError(ctx, err)
		}
		if !covered {
			// Too far behind the shared tail: read the log directly.
			if err := w.catchUp(ctx); err != nil {
				return err
			}
			continue
		}
		if err := w.send(events); err != nil {
			return err
		}
		if terminal(w.lastType) && !s.generating(sess.key) {
			return nil
		}
		if err := s.wait(ctx, changed, poll); err != nil {
			return err
		}
	}
}

// watch is one WatchGeneration call.
type watch struct {
	s        *Service
	t        *topic
	stream   *connect.ServerStream[agentv1.WatchGenerationResponse]
	after    int64
	lastType string // type of the last event sent
}

// catchUp sends the stored log after the watcher's position, read by this
// watcher alone (a resume, or a watcher the shared tail has left behind),
// and then joins the session's shared tail.
func (w *watch) catchUp(ctx context.Context) error {
	mark := w.t.mark()
	for {
		events, err := w.s.store.eventsAfter(ctx, w.t.key, w.after)
		if err != nil {
			return w.readError(ctx, err)
		}
		if err := w.send(events); err != nil {
			return err
		}
		if len(events) < eventPage {
			w.t.join(w.after, mark)
			return nil
		}
	}
}

func (w *watch) send(events []storedEvent) error {
	for _, e := range events {
		msg, err := eventMessage(e)
		if err != nil {
			return internalError(w.s.logger, "decode event", err)
		}
		if err := w.stream.Send(msg); err != nil {
			return err
		}
		w.after, w.lastType = e.id, e.typ
	}
	return nil
}

func (w *watch) readError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return connect.NewError(connect.CodeCanceled, ctx.Err())
	}
	return internalError(w.s.logger, "read events", err)
}

// wait blocks until the session changes, the poll interval passes (events
// appended by another replica), or the caller leaves.
func (s *Service) wait(ctx context.Context, changed <-chan struct{}, poll *time.Timer) error {
	var tick <-chan time.Time
	if poll != nil {
		tick = poll.C
	}
	select {
	case <-changed:
	case <-tick:
	case <-ctx.Done():
		return connect.NewError(connect.CodeCanceled, ctx.Err())
	case <-s.ctx.Done():
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("the agent is shutting down"))
	}
	if poll != nil {
		poll.Reset(s.poll)
	}
	return nil
}

func parseEventID(raw string) (int64, error) {
	if raw == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 {
		return 0, invalid("after_event_id", "must be an event_id of this stream")
	}
	return n, nil
}

func eventMessage(e storedEvent) (*agentv1.WatchGenerationResponse, error) {
	msg := &agentv1.WatchGenerationResponse{
		EventId:    strconv.FormatInt(e.id, 10),
		Type:       e.typ,
		WorkflowId: e.workflowID,
	}
	if e.data != "" {
		msg.Data = &structpb.Struct{}
		if err := protojson.Unmarshal([]byte(e.data), msg.Data); err != nil {
			return nil, fmt.Errorf("event %d: %w", e.id, err)
		}
	}
	return msg, nil
}

// jsonValue turns a message into plain JSON values (snake_case names) for
// an event's data.
func jsonValue(m proto.Message) any {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	return v
}
