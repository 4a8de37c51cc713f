package main

import (
	"io"
	"testing"
	"time"
)

// TestEdgeLimitSettings: the timeouts and caps that bound what one client
// can hold come from flags or the environment.
func TestEdgeLimitSettings(t *testing.T) {
	t.Parallel()
	o, err := parse([]string{"-write-timeout", "7s", "-max-streams-per-caller", "3"}, env(map[string]string{
		"FLOWGATE_BODY_READ_TIMEOUT":      "5s",
		"FLOWGATE_MAX_CONNS_PER_IP":       "10",
		"FLOWGATE_WRITE_TIMEOUT":          "1s",
		"FLOWGATE_MAX_STREAMS_PER_CALLER": "9",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := o.security
	if s.BodyReadTimeout != 5*time.Second || s.MaxConnsPerIP != 10 || s.WriteTimeout != 7*time.Second || s.MaxStreamsPerCaller != 3 {
		t.Errorf("body read %v, conns per IP %d, write %v, streams per caller %d; want 5s, 10, 7s, 3",
			s.BodyReadTimeout, s.MaxConnsPerIP, s.WriteTimeout, s.MaxStreamsPerCaller)
	}
}
