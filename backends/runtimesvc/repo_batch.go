package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/flowgate/flowgate/backends/store"
)

// Dense positions (see schema.go) need each counter row locked from the
// moment a position is drawn until the transaction commits, so that
// position n is never visible before n-1. With one transaction per
// execution, every execution of a tenant waited for the previous one's
// commit (a WAL flush on PostgreSQL): a tenant got one commit's worth of
// executions per flush however many callers it had. Instead, executions
// that arrive while a write is committing queue up and are written together
// by the next transaction, which locks each counter row once for the whole
// batch. Positions stay dense and visible in order; a commit now carries
// every execution that was waiting for it.

const (
	// maxBatch bounds one transaction's executions.
	maxBatch = 64
	// batchTimeout bounds one batch transaction; a caller waits for its
	// batch even when its own context ends meanwhile, so that it never
	// reports a failure for a write that committed.
	batchTimeout = 30 * time.Second
)

// counterKey names one counter row.
type counterKey struct{ tenant, scope string }

// lockRank orders counter rows as the per-execution transactions of
// earlier releases locked them (all before dep:, st: before dst:), so that
// batches and such transactions never wait on each other in a cycle.
func lockRank(scope string) int {
	switch {
	case scope == scopeAll():
		return 0
	case strings.HasPrefix(scope, "dep:"):
		return 1
	case strings.HasPrefix(scope, "st:"):
		return 2
	default:
		return 3
	}
}

func compareKeys(a, b counterKey) int {
	if c := strings.Compare(a.tenant, b.tenant); c != 0 {
		return c
	}
	if c := lockRank(a.scope) - lockRank(b.scope); c != 0 {
		return c
	}
	return strings.Compare(a.scope, b.scope)
}

// batchItem is one execution's write.
type batchItem struct {
	ctx context.Context
	// scopes are the counters the write draws a position from.
	scopes []counterKey
	// apply writes the item inside the batch transaction with the next
	// position of each of its scopes. errDuplicate and errNotFound mean
	// that it wrote nothing and left the transaction usable; any other
	// error aborts the batch.
	apply func(ctx context.Context, tx *store.Tx, pos []int64) error
	err   error
	wake  chan bool // true: this item's caller writes the next batch
}

// skipped reports whether err is an item's own refusal rather than a
// failure of the transaction.
func skipped(err error) bool { return errors.Is(err, errDuplicate) || errors.Is(err, errNotFound) }

// commitGroup gathers concurrent writes into batches. At most one batch is
// being written at a time; the caller at the head of the queue writes the
// next one, so that no goroutine is needed between calls. The zero value
// is ready to use.
type commitGroup struct {
	mu      sync.Mutex
	writing bool
	queue   []*batchItem
}

// do writes it, alone or with others, and returns its outcome.
func (g *commitGroup) do(db *store.DB, it *batchItem) error {
	it.wake = make(chan bool, 1)
	g.mu.Lock()
	g.queue = append(g.queue, it)
	if g.writing {
		g.mu.Unlock()
		if !<-it.wake {
			return it.err
		}
		g.mu.Lock() // it is now at the head of the queue
	}
	g.writing = true
	n := min(len(g.queue), maxBatch)
	batch := g.queue[:n:n]
	g.queue = g.queue[n:]
	if len(g.queue) == 0 {
		g.queue = nil
	}
	g.mu.Unlock()

	writeBatch(db, batch)

	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].wake <- true
	} else {
		g.writing = false
	}
	g.mu.Unlock()
	for _, b := range batch {
		if b != it {
			b.wake <- false
		}
	}
	return it.err
}

// writeBatch writes the items whose callers still wait in one transaction;
// when that fails, it writes each on its own, so that one bad item fails
// only its own caller.
func writeBatch(db *store.DB, batch []*batchItem) {
	live := make([]*batchItem, 0, len(batch))
	for _, it := range batch {
		if it.err = it.ctx.Err(); it.err == nil {
			live = append(live, it)
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	err := writeTx(ctx, db, live)
	if err == nil {
		return
	}
	if len(live) == 1 {
		live[0].err = err
		return
	}
	for _, it := range live {
		if err := writeTx(ctx, db, []*batchItem{it}); err != nil {
			it.err = err
		}
	}
}

// writeTx draws as many positions from each counter as items use it, in a
// fixed order of counters, applies the items, and gives back what the
// items that wrote nothing drew. The counter rows stay locked until
// commit; a batch of one costs what a lone write always cost.
func writeTx(ctx context.Context, db *store.DB, items []*batchItem) error {
	return db.InTx(ctx, func(tx *store.Tx) error {
		drawn := map[counterKey]int64{}
		var keys []counterKey
		for _, it := range items {
			for _, k := range it.scopes {
				if drawn[k] == 0 {
					keys = append(keys, k)
				}
				drawn[k]++
			}
		}
		slices.SortFunc(keys, compareKeys)
		next := make(map[counterKey]int64, len(keys)) // the last position given
		for _, k := range keys {
			var n int64
			err := tx.QueryRow(ctx, `INSERT INTO execution_counters (tenant, scope, n) VALUES (?, ?, ?)
				ON CONFLICT (tenant, scope) DO UPDATE SET n = execution_counters.n + ? RETURNING n`,
				k.tenant, k.scope, drawn[k], drawn[k]).Scan(&n)
			if err != nil {
				return fmt.Errorf("bump counter %s: %w", k.scope, err)
			}
			next[k] = n - drawn[k]
		}
		first := maps.Clone(next)
		for _, it := range items {
			pos := make([]int64, len(it.scopes))
			for i, k := range it.scopes {
				pos[i] = next[k] + 1
			}
			it.err = it.apply(ctx, tx, pos)
			if it.err != nil {
				if skipped(it.err) {
					continue
				}
				return it.err
			}
			for _, k := range it.scopes {
				next[k]++
			}
		}
		for _, k := range keys {
			if unused := first[k] + drawn[k] - next[k]; unused > 0 {
				if _, err := tx.Exec(ctx, `UPDATE execution_counters SET n = n - ? WHERE tenant = ? AND scope = ?`,
					unused, k.tenant, k.scope); err != nil {
					return fmt.Errorf("return positions of %s: %w", k.scope, err)
				}
			}
		}
		return nil
	})
}
