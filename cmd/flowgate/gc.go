package main

import (
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultGOGC is the garbage collector's target when GOGC is not set. A
// gateway keeps little live memory (about 10 MB) and allocates on every
// call, so Go's default of 100 runs a collection every few thousand calls;
// 400 cuts the CPU spent collecting by about three quarters for a few tens
// of megabytes more heap.
const defaultGOGC = "400"

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
