// Package logbuf owns the batching of a process's log output: lines are
// gathered in memory and written out together, at most an interval apart,
// instead of one write system call per line. A gateway writes an access log
// line for every call, and those writes cost more than the rest of its
// logging did.
package logbuf

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// Writer batches the lines written to it. Each Write is one log record;
// records are never split or interleaved.
type Writer struct {
	mu   sync.Mutex
	buf  *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

// New batches writes to w, flushing every interval and whenever size bytes
// are waiting. Close flushes what remains and stops the flushing.
func New(w io.Writer, size int, interval time.Duration) *Writer {
	b := &Writer{buf: bufio.NewWriterSize(w, size), stop: make(chan struct{}), done: make(chan struct{})}
	go b.flushEvery(interval)
	return b
}

func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Available() < len(p) {
		// Flush first so that a record is written whole.
		if err := b.buf.Flush(); err != nil {
			return 0, err
		}
	}
	return b.buf.Write(p)
}

// Flush writes out what is waiting.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Flush()
}

func (b *Writer) flushEvery(interval time.Duration) {
	defer close(b.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			_ = b.Flush()
		case <-b.stop:
			return
		}
	}
}

// Close stops the periodic flush and writes out what is waiting.
func (b *Writer) Close() error {
	select {
	case <-b.stop:
	default:
		close(b.stop)
		<-b.done
	}
	return b.Flush()
}
