package agent

import "sync"

// hub wakes the watchers of a session when an event is appended in this
// process. Watchers take the current channel before reading the log, so an
// append between their read and their wait is never missed.
type hub struct {
	mu     sync.Mutex
	topics map[sessionKey]*topic
}

type topic struct {
	ch   chan struct{}
	refs int
}

func newHub() *hub { return &hub{topics: map[sessionKey]*topic{}} }

// watcher is one subscription; close it when done.
type watcher struct {
	h   *hub
	key sessionKey
}

func (h *hub) watch(key sessionKey) *watcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.topics[key]
	if t == nil {
		t = &topic{ch: make(chan struct{})}
		h.topics[key] = t
	}
	t.refs++
	return &watcher{h: h, key: key}
}

// changed is closed at the next append to the session.
func (w *watcher) changed() <-chan struct{} {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	return w.h.topics[w.key].ch
}

func (w *watcher) close() {
	w.h.mu.Lock()
	defer w.h.mu.Unlock()
	t := w.h.topics[w.key]
	if t.refs--; t.refs == 0 {
		delete(w.h.topics, w.key)
	}
}

func (h *hub) notify(key sessionKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t := h.topics[key]; t != nil {
		close(t.ch)
		t.ch = make(chan struct{})
	}
}
