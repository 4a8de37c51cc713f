package agent

import (
	"context"
	"sync"
	"time"
)

// tailLimit bounds the events a topic keeps in memory. A watcher further
// behind than that reads the durable log itself.
const tailLimit = 256

// hub shares the tail of each watched session's event log among the
// session's watchers in this process. The durable log stays the source of
// truth: a topic reads it once per change (one query for all watchers, not
// one per watcher), and watchers take the new events from memory. Events
// appended by other replicas (PostgreSQL) are picked up the same way when a
// watcher's poll interval passes.
type hub struct {
	mu     sync.Mutex
	topics map[sessionKey]*topic
	load   func(ctx context.Context, key sessionKey, after int64) ([]storedEvent, error)
}

// topic is the in-memory tail of one session's log.
type topic struct {
	key  sessionKey
	refs int // guarded by hub.mu

	loadMu sync.Mutex // one log read at a time

	mu       sync.Mutex
	ch       chan struct{} // closed when tail grows or the session changes
	changes  uint64        // counts notify calls: a read started before the last one is stale
	loaded   uint64        // changes value the tail is current with
	primed   bool          // cursor is known
	cursor   int64         // id of the last event read from the log
	floor    int64         // events with ids up to floor may be missing from tail
	tail     []storedEvent // ascending ids
	lastRead time.Time
}

func newHub(load func(ctx context.Context, key sessionKey, after int64) ([]storedEvent, error)) *hub {
	return &hub{topics: map[sessionKey]*topic{}, load: load}
}

// watch subscribes to a session; release the topic when done. Subscribe
// before reading the log: an event appended after that read is then
// announced to the topic.
func (h *hub) watch(key sessionKey) *topic {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.topics[key]
	if t == nil {
		t = &topic{key: key, ch: make(chan struct{})}
		h.topics[key] = t
	}
	t.refs++
	return t
}

func (h *hub) release(t *topic) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t.refs--; t.refs == 0 {
		delete(h.topics, t.key)
	}
}

// notify says the session changed in this process: an event was appended,
// or its generation state moved.
func (h *hub) notify(key sessionKey) {
	h.mu.Lock()
	t := h.topics[key]
	h.mu.Unlock()
	if t != nil {
		t.changed()
	}
}

func (t *topic) changed() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes++
	close(t.ch)
	t.ch = make(chan struct{})
}

// mark is taken before a watcher reads the log itself; pass it to join.
func (t *topic) mark() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changes
}

// join tells the topic where a watcher that has read the log itself now
// stands; the first watcher's position is where the shared tail starts.
// Changes announced since mark are read again by the next refresh.
func (t *topic) join(after int64, mark uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primed {
		t.primed, t.cursor, t.floor, t.loaded = true, after, after, mark
		t.lastRead = time.Now()
	}
}

// next returns the tail's events after the given id, refreshing the tail
// from the log first if it may be stale (one reader for all watchers), and
// the channel closed at the next change. covered is false when the tail
// no longer reaches back to after: the watcher must read the log itself.
func (t *topic) next(ctx context.Context, h *hub, after int64, maxAge time.Duration) (events []storedEvent, changed <-chan struct{}, covered bool, err error) {
	if err := t.refresh(ctx, h, maxAge); err != nil {
		return nil, nil, false, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	changed = t.ch
	if t.loaded != t.changes {
		// A change was announced while the tail was read (the read
		// replaced the channel that announced it): read again at once
		// rather than wait for a change that may never come.
		changed = closedChan
	}
	if after < t.floor {
		return nil, changed, false, nil
	}
	for i, e := range t.tail {
		if e.id > after {
			events = append([]storedEvent(nil), t.tail[i:]...)
			break
		}
	}
	return events, changed, true, nil
}

// closedChan is ready at once.
var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// refresh reads the log after the tail's cursor when a change was
// announced since the last read, or when the last read is older than
// maxAge (0: never, in-process changes are always announced).
func (t *topic) refresh(ctx context.Context, h *hub, maxAge time.Duration) error {
	if t.current(maxAge) {
		return nil
	}
	t.loadMu.Lock()
	defer t.loadMu.Unlock()
	if t.current(maxAge) {
		return nil // another watcher read it meanwhile
	}
	t.mu.Lock()
	changes, cursor := t.changes, t.cursor
	t.mu.Unlock()
	var read []storedEvent
	for {
		page, err := h.load(ctx, t.key, cursor)
		if err != nil {
			return err
		}
		read = append(read, page...)
		if len(page) < eventPage {
			break
		}
		cursor = page[len(page)-1].id
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.loaded, t.lastRead = changes, time.Now()
	if len(read) == 0 {
		return nil
	}
	t.cursor = read[len(read)-1].id
	t.tail = append(t.tail, read...)
	if over := len(t.tail) - tailLimit; over > 0 {
		t.floor = t.tail[over-1].id
		t.tail = append(t.tail[:0:0], t.tail[over:]...)
	}
	// The events are new to every watcher: wake the ones not reading now.
	close(t.ch)
	t.ch = make(chan struct{})
	return nil
}

func (t *topic) current(maxAge time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.primed {
		return true
	}
	if t.loaded != t.changes {
		return false
	}
	return maxAge <= 0 || time.Since(t.lastRead) < maxAge
}
