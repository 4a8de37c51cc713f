// Package store owns the relational storage shared by the reference backends:
// opening the database (an embedded SQLite file by default, PostgreSQL when a
// URL is given), smoothing over the two SQL dialects, and applying each
// component's schema migrations exactly once.
//
// A component (the runtime, the agent, ...) keeps its own tables and its own
// ordered list of migration steps:
//
//	steps := []string{
//		`CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL)`,
//		`ALTER TABLE sessions ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'`,
//	}
//	if err := db.Migrate(ctx, "agent", steps); err != nil { ... }
//
// Steps are append-only: a step, once released, is never edited or removed;
// a schema change is a new step at the end. Where the dialects differ, build
// the step with [Dialect.Pick] or the type helpers of [Dialect].
//
// Queries are written once with `?` placeholders and passed through
// [DB.Rebind] (or the [DB.Exec], [DB.Query], [DB.QueryRow] shorthands, which
// rebind for you). Store times as integers (Unix microseconds) so that both
// dialects sort and compare them the same way.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// FileName is the SQLite database file created inside Config.DataDir.
const FileName = "flowgate.db"

// sqliteBusyTimeout is how long a SQLite connection waits for another
// writer (in this or another process) before giving up with SQLITE_BUSY.
const sqliteBusyTimeout = 10 * time.Second

// Config selects and tunes the database.
type Config struct {
	// DatabaseURL, when set, is a PostgreSQL URL (postgres:// or
	// postgresql://) and takes precedence over DataDir. Connection
	// parameters such as search_path are passed through to the server.
	DatabaseURL string
	// DataDir is the directory of the SQLite file; created when missing.
	// Defaults to "./data".
	DataDir string
	// MaxOpenConns caps the connection pool; 0 picks a default per dialect.
	MaxOpenConns int
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
}

// DB is an open database with its dialect. It is safe for concurrent use.
type DB struct {
	sql     *sql.DB
	dialect Dialect
	logger  *slog.Logger
	where   string // the file or host, for logs; never carries a password
}

// Open opens (and creates, for SQLite) the database described by cfg and
// checks that it answers.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var (
		db  *DB
		err error
	)
	if cfg.DatabaseURL != "" {
		db, err = openPostgres(cfg)
	} else {
		db, err = openSQLite(cfg)
	}
	if err != nil {
		return nil, err
	}
	db.logger = logger
	pingCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := db.sql.PingContext(pingCtx); err != nil {
		_ = db.sql.Close()
		return nil, fmt.Errorf("store: could not reach %s database at %s: %w", db.dialect, db.where, err)
	}
	logger.Info("database opened", "dialect", db.dialect.String(), "where", db.where)
	return db, nil
}

func openSQLite(cfg Config) (*DB, error) {
	dir := cfg.DataDir
	if dir == "" {
		dir = "./data"
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("store: could not create data directory %q: %w", dir, err)
	}
	path := filepath.Join(dir, FileName)
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds()))
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	// Write transactions take the write lock at BEGIN, so two of them never
	// deadlock upgrading from a read lock; busy_timeout then queues them.
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode()
	sqlDB, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: could not open SQLite file %q: %w", path, err)
	}
	maxConns := cfg.MaxOpenConns
	if maxConns <= 0 {
		maxConns = 8
	}
	sqlDB.SetMaxOpenConns(maxConns)
	sqlDB.SetMaxIdleConns(maxConns)
	sqlDB.SetConnMaxIdleTime(0)
	return &DB{sql: sqlDB, dialect: SQLite, where: path}, nil
}

func openPostgres(cfg Config) (*DB, error) {
	u, err := url.Parse(cfg.DatabaseURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, errors.New("store: DatabaseURL must be a postgres:// or postgresql:// URL")
	}
	sqlDB, err := sql.Open("pgx", cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("store: could not open PostgreSQL at %s: %w", u.Redacted(), err)
	}
	maxConns := cfg.MaxOpenConns
	if maxConns <= 0 {
		maxConns = 16
	}
	sqlDB.SetMaxOpenConns(maxConns)
	sqlDB.SetMaxIdleConns(maxConns)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	where := u.Host + u.Path
	return &DB{sql: sqlDB, dialect: Postgres, where: where}, nil
}

// Close closes the connection pool.
func (db *DB) Close() error {
	if err := db.sql.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// SQL is the underlying pool, for what the shorthands below do not cover.
// Queries run on it directly must be rebound with [DB.Rebind].
func (db *DB) SQL() *sql.DB { return db.sql }

// Dialect reports which database this is.
func (db *DB) Dialect() Dialect { return db.dialect }

// Rebind rewrites `?` placeholders into the dialect's form.
func (db *DB) Rebind(query string) string { return db.dialect.Rebind(query) }

// Exec runs a statement written with `?` placeholders.
func (db *DB) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return db.sql.ExecContext(ctx, db.Rebind(query), args...)
}

// Query runs a query written with `?` placeholders.
func (db *DB) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return db.sql.QueryContext(ctx, db.Rebind(query), args...)
}

// QueryRow runs a single-row query written with `?` placeholders.
func (db *DB) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return db.sql.QueryRowContext(ctx, db.Rebind(query), args...)
}

// Tx is a transaction whose shorthands rebind `?` placeholders.
type Tx struct {
	*sql.Tx
	dialect Dialect
}

// Exec runs a statement written with `?` placeholders.
func (tx *Tx) Exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return tx.ExecContext(ctx, tx.dialect.Rebind(query), args...)
}

// Query runs a query written with `?` placeholders.
func (tx *Tx) Query(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return tx.QueryContext(ctx, tx.dialect.Rebind(query), args...)
}

// QueryRow runs a single-row query written with `?` placeholders.
func (tx *Tx) QueryRow(ctx context.Context, query string, args ...any) *sql.Row {
	return tx.QueryRowContext(ctx, tx.dialect.Rebind(query), args...)
}

// Dialect reports which database this is.
func (tx *Tx) Dialect() Dialect { return tx.dialect }

// InTx runs fn in a transaction, committing when fn returns nil and rolling
// back otherwise. On SQLite the transaction holds the write lock from its
// start, so read-then-write sequences inside fn are serialised.
func (db *DB) InTx(ctx context.Context, fn func(tx *Tx) error) error {
	sqlTx, err := db.sql.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	tx := &Tx{Tx: sqlTx, dialect: db.dialect}
	if err := fn(tx); err != nil {
		_ = sqlTx.Rollback()
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}
