package sse

import (
	"sync"
	"time"
)

// heartbeatTicks is how many times per interval the shared ticker looks
// for quiet streams: a stream hears a heartbeat after between one and
// 1+1/heartbeatTicks intervals of silence.
const heartbeatTicks = 4

// heartbeats is one ticker for all the open streams of a bridge, instead of
// a timer per stream. Its goroutine runs only while streams are open.
type heartbeats struct {
	interval time.Duration

	mu      sync.Mutex
	streams map[*stream]struct{}
	running bool
}

func newHeartbeats(interval time.Duration) *heartbeats {
	return &heartbeats{interval: interval, streams: map[*stream]struct{}{}}
}

func (h *heartbeats) add(s *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.streams[s] = struct{}{}
	if !h.running {
		h.running = true
		go h.run()
	}
}

func (h *heartbeats) remove(s *stream) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.streams, s)
}

func (h *heartbeats) run() {
	ticker := time.NewTicker(h.interval / heartbeatTicks)
	defer ticker.Stop()
	var due []*stream
	for now := range ticker.C {
		h.mu.Lock()
		if len(h.streams) == 0 {
			h.running = false
			h.mu.Unlock()
			return
		}
		for s := range h.streams {
			if s.quietSince(now, h.interval) {
				due = append(due, s)
			}
		}
		h.mu.Unlock()
		for i, s := range due {
			// A slow browser blocks its write for up to writeGrace: never
			// make the others wait for it.
			go s.beat()
			due[i] = nil
		}
		due = due[:0]
	}
}
