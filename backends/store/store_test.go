package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/flowgate/flowgate/backends/store"
	"github.com/flowgate/flowgate/backends/store/storetest"
)

func TestStore(t *testing.T) {
	t.Parallel()
	for _, b := range storetest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			t.Parallel()
			t.Run("migrate", func(t *testing.T) { t.Parallel(); testMigrate(t, b.Open(t)) })
			t.Run("migrate concurrently", func(t *testing.T) { t.Parallel(); testMigrateConcurrent(t, b.Open(t)) })
			t.Run("migrate rolls back a failing step", func(t *testing.T) { t.Parallel(); testMigrateFailure(t, b.Open(t)) })
			t.Run("unique violation", func(t *testing.T) { t.Parallel(); testUnique(t, b.Open(t)) })
			t.Run("transactions", func(t *testing.T) { t.Parallel(); testTx(t, b.Open(t)) })
		})
	}
}

func testMigrate(t *testing.T, db *store.DB) {
	ctx := t.Context()
	steps := []string{
		`CREATE TABLE items (id ` + db.Dialect().SerialPrimaryKey() + `, name TEXT NOT NULL, data ` + db.Dialect().Blob() + `)`,
	}
	if err := db.Migrate(ctx, "items", steps); err != nil {
		t.Fatalf("first migrate: %v", err)
	}
	// Running again must not re-apply the CREATE TABLE.
	if err := db.Migrate(ctx, "items", steps); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	steps = append(steps, `ALTER TABLE items ADD COLUMN note TEXT NOT NULL DEFAULT ''`)
	if err := db.Migrate(ctx, "items", steps); err != nil {
		t.Fatalf("migrate with an added step: %v", err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO items (name, data, note) VALUES (?, ?, ?)`, "a", []byte{0, 1, 2}, "n"); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var (
		name string
		data []byte
		note string
	)
	if err := db.QueryRow(ctx, `SELECT name, data, note FROM items WHERE name = ?`, "a").Scan(&name, &data, &note); err != nil {
		t.Fatalf("select: %v", err)
	}
	if name != "a" || string(data) != "\x00\x01\x02" || note != "n" {
		t.Fatalf("got %q %q %q", name, data, note)
	}
	// A second component keeps its own step count.
	if err := db.Migrate(ctx, "other", []string{`CREATE TABLE other_items (id INTEGER PRIMARY KEY)`}); err != nil {
		t.Fatalf("migrate other component: %v", err)
	}
	// A build that knows fewer steps than were applied must refuse.
	if err := db.Migrate(ctx, "items", steps[:1]); err == nil {
		t.Fatal("migrate with fewer steps than applied succeeded")
	}
	if err := db.Migrate(ctx, "", steps); err == nil {
		t.Fatal("migrate without component name succeeded")
	}
}

func testMigrateConcurrent(t *testing.T, db *store.DB) {
	ctx := t.Context()
	steps := []string{
		`CREATE TABLE counters (name TEXT PRIMARY KEY, n INTEGER NOT NULL)`,
		`INSERT INTO counters (name, n) VALUES ('runs', 1)`,
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- db.Migrate(ctx, "counters", steps) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate: %v", err)
		}
	}
	var count int
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM counters`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != 1 {
		t.Fatalf("the insert step ran %d times, want 1", count)
	}
}

func testMigrateFailure(t *testing.T, db *store.DB) {
	ctx := t.Context()
	steps := []string{
		`CREATE TABLE good (id INTEGER PRIMARY KEY)`,
		`THIS IS NOT SQL`,
	}
	if err := db.Migrate(ctx, "broken", steps); err == nil {
		t.Fatal("migrate with a broken step succeeded")
	}
	// Nothing of the failed call stays: the first step is applied again.
	if err := db.Migrate(ctx, "broken", steps[:1]); err != nil {
		t.Fatalf("migrate after failure: %v", err)
	}
}

func testUnique(t *testing.T, db *store.DB) {
	ctx := t.Context()
	if err := db.Migrate(ctx, "uniq", []string{`CREATE TABLE uniq (k TEXT PRIMARY KEY, v TEXT UNIQUE)`}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO uniq (k, v) VALUES (?, ?)`, "a", "x"); err != nil {
		t.Fatal(err)
	}
	_, err := db.Exec(ctx, `INSERT INTO uniq (k, v) VALUES (?, ?)`, "a", "y")
	if !store.IsUniqueViolation(err) {
		t.Fatalf("duplicate primary key: IsUniqueViolation(%v) = false", err)
	}
	_, err = db.Exec(ctx, `INSERT INTO uniq (k, v) VALUES (?, ?)`, "b", "x")
	if !store.IsUniqueViolation(err) {
		t.Fatalf("duplicate unique column: IsUniqueViolation(%v) = false", err)
	}
	if store.IsUniqueViolation(errors.New("other")) || store.IsUniqueViolation(nil) {
		t.Fatal("IsUniqueViolation true for an unrelated error")
	}
}

func testTx(t *testing.T, db *store.DB) {
	ctx := t.Context()
	if err := db.Migrate(ctx, "txs", []string{`CREATE TABLE txs (k TEXT PRIMARY KEY, n INTEGER NOT NULL)`}); err != nil {
		t.Fatal(err)
	}
	errBoom := errors.New("boom")
	err := db.InTx(ctx, func(tx *store.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO txs (k, n) VALUES (?, ?)`, "rolled back", 1); err != nil {
			return err
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("InTx error = %v, want boom", err)
	}
	// Concurrent read-modify-write transactions must not lose updates.
	if _, err := db.Exec(ctx, `INSERT INTO txs (k, n) VALUES (?, ?)`, "c", 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			err := db.InTx(ctx, func(tx *store.Tx) error {
				var n int
				q := `SELECT n FROM txs WHERE k = ?` + tx.Dialect().Pick("", " FOR UPDATE")
				if err := tx.QueryRow(ctx, q, "c").Scan(&n); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `UPDATE txs SET n = ? WHERE k = ?`, n+1, "c")
				return err
			})
			if err != nil {
				t.Errorf("increment: %v", err)
			}
		})
	}
	wg.Wait()
	var n, rolled int
	if err := db.QueryRow(ctx, `SELECT n FROM txs WHERE k = ?`, "c").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, `SELECT COUNT(*) FROM txs WHERE k = ?`, "rolled back").Scan(&rolled); err != nil {
		t.Fatal(err)
	}
	if n != 10 || rolled != 0 {
		t.Fatalf("n = %d (want 10), rolled back rows = %d (want 0)", n, rolled)
	}
}

func TestRebind(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, pg string }{
		{`SELECT 1`, `SELECT 1`},
		{`a = ? AND b = ?`, `a = $1 AND b = $2`},
		{`x = '?' AND y = ?`, `x = '?' AND y = $1`},
		{`x = 'it''s ?' AND "q?" = ?`, `x = 'it''s ?' AND "q?" = $1`},
		{"-- what?\nSELECT ?", "-- what?\nSELECT $1"},
	}
	for _, c := range cases {
		if got := store.Postgres.Rebind(c.in); got != c.pg {
			t.Errorf("Postgres.Rebind(%q) = %q, want %q", c.in, got, c.pg)
		}
		if got := store.SQLite.Rebind(c.in); got != c.in {
			t.Errorf("SQLite.Rebind(%q) = %q, want it unchanged", c.in, got)
		}
	}
}

func TestOpenSQLiteFile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nested", "data")
	db, err := store.Open(t.Context(), store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		t.Fatalf("database file: %v", err)
	}
	var mode string
	if err := db.QueryRow(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	var fk int
	if err := db.QueryRow(t.Context(), `PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Fatalf("foreign_keys = %d, %v; want 1", fk, err)
	}
	// Data survives a reopen.
	if err := db.Migrate(t.Context(), "persist", []string{`CREATE TABLE persist (v TEXT)`, `INSERT INTO persist VALUES ('kept')`}); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	db2, err := store.Open(t.Context(), store.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	var v string
	if err := db2.QueryRow(t.Context(), `SELECT v FROM persist`).Scan(&v); err != nil || v != "kept" {
		t.Fatalf("after reopen: %q, %v", v, err)
	}
}

func TestOpenErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if _, err := store.Open(ctx, store.Config{DatabaseURL: "mysql://x"}); err == nil {
		t.Fatal("non-postgres URL accepted")
	}
	_, err := store.Open(ctx, store.Config{DatabaseURL: "postgres://nobody:secret@127.0.0.1:1/none?connect_timeout=2"})
	if err == nil {
		t.Fatal("unreachable postgres accepted")
	}
	if got := fmt.Sprint(err); strings.Contains(got, "secret") {
		t.Fatalf("error leaks the password: %s", got)
	}
}
