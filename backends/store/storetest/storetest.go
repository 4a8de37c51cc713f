// Package storetest opens throwaway databases for tests of packages built
// on [store]: a SQLite file in a temporary directory, and a fresh
// PostgreSQL schema when FLOWGATE_TEST_DATABASE_URL is set.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver for schema setup

	"github.com/flowgate/flowgate/backends/store"
)

// EnvDatabaseURL names the variable holding the PostgreSQL test URL.
const EnvDatabaseURL = "FLOWGATE_TEST_DATABASE_URL"

// Backend opens a fresh, empty database of one dialect.
type Backend struct {
	Name string
	Open func(tb testing.TB) *store.DB
}

// Backends lists SQLite and, when EnvDatabaseURL is set, PostgreSQL. Run
// the same suite over each with t.Run(b.Name, ...); the PostgreSQL entry
// skips when the URL is unset.
func Backends() []Backend {
	return []Backend{
		{Name: "sqlite", Open: OpenSQLite},
		{Name: "postgres", Open: OpenPostgres},
	}
}

// OpenSQLite opens a new SQLite database in a temporary directory.
func OpenSQLite(tb testing.TB) *store.DB {
	tb.Helper()
	return open(tb, store.Config{DataDir: tb.TempDir()})
}

// OpenPostgres opens a new schema in the test PostgreSQL database and drops
// it when the test ends. It skips the test when EnvDatabaseURL is unset.
func OpenPostgres(tb testing.TB) *store.DB {
	tb.Helper()
	dbURL, _ := PostgresSchema(tb)
	return open(tb, store.Config{DatabaseURL: dbURL})
}

// PostgresSchema creates a uniquely named schema and returns a database URL
// whose connections use it, dropping it when the test ends. It skips the
// test when EnvDatabaseURL is unset.
func PostgresSchema(tb testing.TB) (dbURL, schema string) {
	tb.Helper()
	base := os.Getenv(EnvDatabaseURL)
	if base == "" {
		tb.Skipf("%s is not set", EnvDatabaseURL)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema = "flowgate_test_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", base)
	if err != nil {
		tb.Fatalf("open %s: %v", EnvDatabaseURL, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+schema); err != nil {
		_ = admin.Close()
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
		_ = admin.Close()
	})
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("parse %s: %v", EnvDatabaseURL, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), schema
}

func open(tb testing.TB, cfg store.Config) *store.DB {
	tb.Helper()
	db, err := store.Open(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("store.Open: %v", err)
	}
	tb.Cleanup(func() { _ = db.Close() })
	return db
}
