package logbuf

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.buf.Write(p)
}

func (l *lockedBuffer) snapshot() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String(), l.writes
}

func TestBatchesAndFlushes(t *testing.T) {
	t.Parallel()
	out := &lockedBuffer{}
	w := New(out, 4096, 20*time.Millisecond)
	for range 100 {
		if _, err := w.Write([]byte("line\n")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, writes := out.snapshot()
		if got == strings.Repeat("line\n", 100) {
			if writes > 2 {
				t.Errorf("%d writes for 100 lines, want them batched", writes)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not flushed by the interval: %q", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestRecordsStayWhole(t *testing.T) {
	t.Parallel()
	out := &lockedBuffer{}
	w := New(out, 16, time.Hour)
	for _, rec := range []string{"0123456789\n", "abcdefghij\n", "a record longer than the buffer\n"} {
		if _, err := w.Write([]byte(rec)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := out.snapshot()
	if got != "0123456789\nabcdefghij\na record longer than the buffer\n" {
		t.Errorf("got %q", got)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
