package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultGOGC is the garbage collector's target when GOGC is not set. A
// gateway keeps little live memory (about 5 MB) and allocates on every
// call, so Go's default of 100 collects every few hundred calls and 400
// still spent a tenth of a forwarded call's CPU collecting; 1000 cuts that
// by more than half for a few tens of MB more heap (53 to 79 MB of RSS
// after 120,000 calls in front of the bench's null backend). The soft
// memory limit (see memoryLimit) makes the collector work harder instead
// when the heap nears what the container may use.
const defaultGOGC = "1000"

// applyGOGC sets the collector's target from a GOGC value: a percentage, or
// "off".
func applyGOGC(value string) error {
	if strings.EqualFold(value, "off") {
		debug.SetGCPercent(-1)
		return nil
	}
	n, err := strconv.Atoi(value)
	if err != nil || n <= 0 {
		return fmt.Errorf("GOGC %q: want a positive percentage or off", value)
	}
	debug.SetGCPercent(n)
	return nil
}

// memoryLimitShare is the part of a container's memory limit the heap is
// kept under when no limit is given: the rest is for stacks, the
// runtime's own memory and what the kernel counts against the container.
const memoryLimitShare = 0.9

// applyMemoryLimit sets the runtime's soft memory limit from value, in
// GOMEMLIMIT's syntax, or "off"; when value is empty, from the memory
// limit of the process's cgroup (v2, or v1), which is how a container's
// limit reaches it. Without either the runtime has no limit, as Go's
// default.
func applyMemoryLimit(value, cgroupRoot string) error {
	if value != "" {
		limit, err := parseByteCount(value)
		if err != nil {
			return fmt.Errorf("GOMEMLIMIT %q: %w", value, err)
		}
		debug.SetMemoryLimit(limit)
		return nil
	}
	if limit, ok := cgroupMemoryLimit(cgroupRoot); ok {
		debug.SetMemoryLimit(int64(float64(limit) * memoryLimitShare))
	}
	return nil
}

// cgroupMemoryLimit reads the memory limit of the cgroup mounted at root
// (the process's own in a container, whose cgroup namespace puts it
// there): cgroup v2's memory.max, else v1's memory.limit_in_bytes, which
// says "unlimited" with a number near the largest int64.
func cgroupMemoryLimit(root string) (int64, bool) {
	for _, name := range []string{"memory.max", "memory/memory.limit_in_bytes"} {
		data, err := os.ReadFile(root + "/" + name)
		if err != nil {
			continue
		}
		text := strings.TrimSpace(string(data))
		if text == "max" {
			return 0, false
		}
		n, err := strconv.ParseInt(text, 10, 64)
		if err != nil || n <= 0 || n >= math.MaxInt64/2 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// parseByteCount parses GOMEMLIMIT's syntax: a number of bytes with an
// optional B, KiB, MiB, GiB or TiB suffix, or "off".
func parseByteCount(s string) (int64, error) {
	if s == "off" {
		return math.MaxInt64, nil
	}
	units := []struct {
		suffix string
		size   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	size := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, size = strings.TrimSuffix(s, u.suffix), u.size
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive number of bytes with an optional B, KiB, MiB, GiB or TiB suffix, or off")
	}
	if n > math.MaxInt64/size {
		return 0, errors.New("too large")
	}
	return n * size, nil
}
