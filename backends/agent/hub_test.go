package agent

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memLog is an event log in memory that counts its reads.
type memLog struct {
	mu     sync.Mutex
	events []storedEvent
	reads  atomic.Int64
}

func (l *memLog) append(h *hub, key sessionKey, typ string) {
	l.mu.Lock()
	l.events = append(l.events, storedEvent{id: int64(len(l.events) + 1), typ: typ})
	l.mu.Unlock()
	h.notify(key)
}

func (l *memLog) after(_ context.Context, _ sessionKey, after int64) ([]storedEvent, error) {
	l.reads.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []storedEvent
	for _, e := range l.events {
		if e.id > after && len(out) < eventPage {
			out = append(out, e)
		}
	}
	return out, nil
}

// Watchers of one session share one log read per change and each still
// sees every event once, in order.
func TestHubSharesReadsAmongWatchers(t *testing.T) {
	t.Parallel()
	const watchers, events = 50, 20
	log := &memLog{}
	h := newHub(log.after)
	key := sessionKey{tenant: "t", id: "s"}
	ctx := t.Context()
	var ready, done sync.WaitGroup
	got := make([][]int64, watchers)
	for i := range watchers {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			tp := h.watch(key)
			defer h.release(tp)
			tp.join(0, tp.mark())
			ready.Done()
			after := int64(0)
			for after < events {
				evs, changed, covered, err := tp.next(ctx, h, after, 0)
				if err != nil || !covered {
					t.Errorf("next: covered %v, %v", covered, err)
					return
				}
				for _, e := range evs {
					got[i] = append(got[i], e.id)
					after = e.id
				}
				if after < events {
					select {
					case <-changed:
					case <-time.After(5 * time.Second):
						t.Errorf("watcher %d stuck after %d", i, after)
						return
					}
				}
			}
		}()
	}
	ready.Wait()
	for range events {
		log.append(h, key, eventDraft)
		time.Sleep(time.Millisecond)
	}
	done.Wait()
	for i, ids := range got {
		if len(ids) != events {
			t.Fatalf("watcher %d got %v", i, ids)
		}
		for j, id := range ids {
			if id != int64(j+1) {
				t.Fatalf("watcher %d got %v, want 1..%d in order", i, ids, events)
			}
		}
	}
	if reads := log.reads.Load(); reads > 2*events {
		t.Errorf("%d log reads for %d events and %d watchers, want at most one per change", reads, events, watchers)
	}
}

// A watcher the in-memory tail has left behind is told to read the log.
func TestHubTailLeavesSlowWatcherToTheLog(t *testing.T) {
	t.Parallel()
	log := &memLog{}
	h := newHub(log.after)
	key := sessionKey{tenant: "t", id: "s"}
	tp := h.watch(key)
	defer h.release(tp)
	tp.join(0, tp.mark())
	for range tailLimit + 10 {
		log.append(h, key, eventDraft)
	}
	if _, _, covered, err := tp.next(t.Context(), h, 0, 0); err != nil || covered {
		t.Fatalf("next after 0: covered %v, %v; want a read of the log", covered, err)
	}
	evs, _, covered, err := tp.next(t.Context(), h, 20, 0)
	if err != nil || !covered || len(evs) != tailLimit-10 || evs[0].id != 21 {
		t.Fatalf("next after 20: %d events (first %v), covered %v, %v", len(evs), evs, covered, err)
	}
}

// An event appended while the tail is being read must not wait for the
// next change: the watcher that read is told to read again at once.
func TestHubEventDuringReadIsNotLost(t *testing.T) {
	t.Parallel()
	log := &memLog{}
	var h *hub
	key := sessionKey{tenant: "t", id: "s"}
	var once sync.Once
	h = newHub(func(ctx context.Context, k sessionKey, after int64) ([]storedEvent, error) {
		events, err := log.after(ctx, k, after)
		// Another goroutine appends right after this read's snapshot.
		once.Do(func() { log.append(h, key, eventDebugging) })
		return events, err
	})
	tp := h.watch(key)
	defer h.release(tp)
	tp.join(0, tp.mark())
	log.append(h, key, eventDraft)

	events, changed, _, err := tp.next(t.Context(), h, 0, 0)
	if err != nil || len(events) != 1 || events[0].typ != eventDraft {
		t.Fatalf("first read: %v %v", events, err)
	}
	select {
	case <-changed:
	case <-time.After(time.Second):
		t.Fatal("the event appended during the read was not announced")
	}
	events, _, _, err = tp.next(t.Context(), h, 1, 0)
	if err != nil || len(events) != 1 || events[0].typ != eventDebugging {
		t.Fatalf("second read: %v %v", events, err)
	}
}
