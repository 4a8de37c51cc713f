package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestParseByteCount(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1048576", 1 << 20, true},
		{"512B", 512, true},
		{"400MiB", 400 << 20, true},
		{"2GiB", 2 << 30, true},
		{"1TiB", 1 << 40, true},
		{"64KiB", 64 << 10, true},
		{"off", math.MaxInt64, true},
		{"", 0, false},
		{"0", 0, false},
		{"-5MiB", 0, false},
		{"12MB", 0, false},
		{"1.5GiB", 0, false},
		{"9999999999TiB", 0, false},
	} {
		got, err := parseByteCount(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseByteCount(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	write := func(t *testing.T, root, name, text string) {
		t.Helper()
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, file, text string
		want             int64
		ok               bool
	}{
		{"v2 limit", "memory.max", "536870912\n", 512 << 20, true},
		{"v2 unlimited", "memory.max", "max\n", 0, false},
		{"v1 limit", "memory/memory.limit_in_bytes", "268435456\n", 256 << 20, true},
		{"v1 unlimited", "memory/memory.limit_in_bytes", "9223372036854771712\n", 0, false},
		{"garbage", "memory.max", "lots\n", 0, false},
		{"none", "", "", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if c.file != "" {
				write(t, root, c.file, c.text)
			}
			got, ok := cgroupMemoryLimit(root)
			if got != c.want || ok != c.ok {
				t.Errorf("got %d, %v; want %d, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

// TestApplyMemoryLimit: a given limit wins; without one, the container's
// limit sets it, with room left for what is not heap.
func TestApplyMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "memory.max"), []byte("1000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyMemoryLimit("", root); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 900000000 {
		t.Errorf("limit from the cgroup = %d, want 900000000", got)
	}
	if err := applyMemoryLimit("300MiB", root); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("given limit = %d, want %d", got, 300<<20)
	}
	if err := applyMemoryLimit("lots", root); err == nil {
		t.Error("a limit that does not parse was taken")
	}
}
