package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"
)

// migrationsTable records, per component, which steps have been applied.
const migrationsTable = "flowgate_migrations"

// Migrate applies the steps of component that are not applied yet, in
// order, each recorded in the migrations table. It is safe to call from
// several processes at once: on PostgreSQL a transaction-scoped advisory
// lock per component (and schema) serialises them; on SQLite the write lock
// taken at BEGIN does. All pending steps of one call commit together, so a
// failing step leaves the schema as it was.
//
// A database that has more steps recorded than are given was migrated by a
// newer build; Migrate refuses to run against it.
func (db *DB) Migrate(ctx context.Context, component string, steps []string) error {
	if component == "" {
		return errors.New("store: migrate: component name is empty")
	}
	err := db.InTx(ctx, func(tx *Tx) error {
		if err := db.lockMigrations(ctx, tx, component); err != nil {
			return err
		}
		applied, err := appliedSteps(ctx, tx, component)
		if err != nil {
			return err
		}
		if applied > len(steps) {
			return fmt.Errorf("store: component %q has %d migration steps applied but this build knows only %d", component, applied, len(steps))
		}
		for i := applied; i < len(steps); i++ {
			if _, err := tx.ExecContext(ctx, steps[i]); err != nil {
				return fmt.Errorf("store: component %q migration step %d: %w", component, i+1, err)
			}
			if _, err := tx.Exec(ctx,
				`INSERT INTO `+migrationsTable+` (component, step, applied_at) VALUES (?, ?, ?)`,
				component, i+1, time.Now().UnixMicro()); err != nil {
				return fmt.Errorf("store: component %q record step %d: %w", component, i+1, err)
			}
		}
		if applied < len(steps) {
			db.logger.Info("database migrated", "component", component, "from", applied, "to", len(steps))
		}
		return nil
	})
	return err
}

// lockMigrations serialises migrators and makes sure the migrations table
// exists. On PostgreSQL the lock is taken before the CREATE TABLE because
// concurrent CREATE TABLE IF NOT EXISTS can still collide there.
func (db *DB) lockMigrations(ctx context.Context, tx *Tx, component string) error {
	if db.dialect == Postgres {
		// The schema is part of the key so that tests (or tenants) in
		// separate schemas of one database do not wait on each other.
		var schema string
		if err := tx.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
			return fmt.Errorf("store: migrate: current schema: %w", err)
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(?)`, lockKey(schema+"/"+component)); err != nil {
			return fmt.Errorf("store: migrate: advisory lock: %w", err)
		}
	}
	_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+migrationsTable+` (
		component TEXT NOT NULL,
		step INTEGER NOT NULL,
		applied_at BIGINT NOT NULL,
		PRIMARY KEY (component, step))`)
	if err != nil {
		return fmt.Errorf("store: migrate: create migrations table: %w", err)
	}
	return nil
}

func appliedSteps(ctx context.Context, tx *Tx, component string) (int, error) {
	var n int
	err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(step), 0) FROM `+migrationsTable+` WHERE component = ?`, component).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("store: migrate: read applied steps of %q: %w", component, err)
	}
	return n, nil
}

// lockKey maps a name onto PostgreSQL's 64-bit advisory lock key space.
func lockKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("flowgate.migrate:" + name))
	return int64(h.Sum64()) //nolint:gosec // wrapping is intended: any 64-bit key will do
}
