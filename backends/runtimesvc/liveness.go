package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/flowgate/flowgate/backends/store"
)

// Each runtime process owns the executions it starts. On PostgreSQL it
// holds a session advisory lock named after its instance id for as long as
// it lives; an owner whose lock can be taken is gone, and its running
// executions are marked interrupted. A SQLite file belongs to one process,
// so there every running execution of an earlier instance is interrupted
// at start.

func ownerLockKey(owner string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("flowgate.runtime.owner:" + owner))
	return int64(h.Sum64()) //nolint:gosec // any 64-bit key will do
}

// holdOwnerLock takes this instance's lock on a dedicated connection.
func (s *Service) holdOwnerLock(ctx context.Context) error {
	if s.db.Dialect() != store.Postgres {
		return nil
	}
	conn, err := s.db.SQL().Conn(ctx)
	if err != nil {
		return fmt.Errorf("runtimesvc: owner lock connection: %w", err)
	}
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, ownerLockKey(s.instance)); err != nil {
		_ = conn.Close()
		return fmt.Errorf("runtimesvc: owner lock: %w", err)
	}
	s.lockConn = conn
	return nil
}

// sweepInterrupted marks the running executions of dead owners interrupted.
func (s *Service) sweepInterrupted(ctx context.Context) error {
	owners, err := s.repo.runningOwners(ctx)
	if err != nil {
		return err
	}
	for _, owner := range owners {
		if owner == s.instance {
			continue
		}
		dead, release, err := s.ownerGone(ctx, owner)
		if err != nil {
			return err
		}
		if !dead {
			continue
		}
		err = s.interruptAll(ctx, owner)
		release()
		if err != nil {
			return err
		}
	}
	return nil
}

// ownerGone reports whether owner's process is gone; while the returned
// release is not called, the owner's lock is held so it cannot come back.
func (s *Service) ownerGone(ctx context.Context, owner string) (bool, func(), error) {
	if s.db.Dialect() != store.Postgres {
		return true, func() {}, nil
	}
	conn, err := s.db.SQL().Conn(ctx)
	if err != nil {
		return false, nil, fmt.Errorf("sweep connection: %w", err)
	}
	key := ownerLockKey(owner)
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		_ = conn.Close()
		return false, nil, fmt.Errorf("probe owner lock: %w", err)
	}
	if !got {
		_ = conn.Close()
		return false, func() {}, nil
	}
	return true, func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key)
		_ = conn.Close()
	}, nil
}

func (s *Service) interruptAll(ctx context.Context, owner string) error {
	running, err := s.repo.runningOf(ctx, owner)
	if err != nil {
		return err
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	for _, e := range running {
		e.status, e.errText, e.finishedAt = statusInterrupted, "the runtime process stopped while the execution was running", now
		if err := s.repo.finishExecution(ctx, e); err != nil && !errors.Is(err, errNotFound) {
			return err
		}
		s.logger.Warn("execution interrupted", "execution_id", e.id, "deployment_id", e.deploymentID)
	}
	return nil
}

func (s *Service) sweepLoop(ctx context.Context) {
	every(ctx, s.cfg.SweepInterval, func() {
		if err := s.sweepInterrupted(ctx); err != nil && ctx.Err() == nil {
			s.logger.Error("interrupted-execution sweep failed", "error", err)
		}
	})
}

// every calls fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
