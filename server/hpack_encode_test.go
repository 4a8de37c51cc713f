package server

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// TestHPACKEncoderDecodes checks the upstream client's header compression
// against x/net's decoder, which is what a Go upstream runs: thousands of
// blocks of fields that repeat, change every call, are new, or are too big
// to index, with the upstream's table size changing between blocks
// (shrinking to nothing, growing past the default, down and up again
// before the next block). Every block must decode to exactly the fields
// encoded; an index or an eviction out of step with the decoder's table
// decodes to another field or fails.
func TestHPACKEncoderDecodes(t *testing.T) {
	token := strings.Repeat("eyJhbGciOiJIUzI1NiJ9", 15)
	repeating := [][2]string{
		{":path", "/workflow.agent.v1.WorkflowAgentService/CreateSession"},
		{":path", "/workflow.runtime.v1.WorkflowRuntimeService/GetExecution"},
		{":authority", "127.0.0.1:50051"},
		{"content-type", "application/grpc+proto"},
		{"user-agent", "flowgate"},
		{"te", "trailers"},
		{"x-flowgate-token", token},
		{"x-flowgate-token", token[:200]},
		{"x-flowgate-subject", "alice"},
		{"x-flowgate-tenant", "acme"},
		{"x-custom-bin", "AAECAw"},
	}
	sizes := []uint32{0, 64, 300, 1000, 4096, 8192, 1 << 16}
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed*7919)) //nolint:gosec // a reproducible test sequence
			enc := newHPACKEncoder()
			dec := hpack.NewDecoder(hpackDefaultTable, nil)
			for block := range 3000 {
				// The upstream changes its table size now and then, at
				// times twice between two blocks.
				before, allowed := enc.max, uint32(1<<32-1)
				for rng.IntN(40) == 0 {
					v := sizes[rng.IntN(len(sizes))]
					enc.setMaxTable(v)
					dec.SetAllowedMaxDynamicTableSize(v)
					allowed = min(allowed, v)
				}
				var want []hpack.HeaderField
				add := func(name, value string) { want = append(want, hpack.HeaderField{Name: name, Value: value}) }
				add(":method", "POST")
				add(":scheme", "http")
				for range 1 + rng.IntN(8) {
					switch r := rng.IntN(10); {
					case r < 6:
						f := repeating[rng.IntN(len(repeating))]
						add(f[0], f[1])
					case r < 8:
						name := []string{"x-request-id", "grpc-timeout", "traceparent", "idempotency-key"}[rng.IntN(4)]
						add(name, fmt.Sprintf("%032x", rng.Uint64()))
					case r < 9:
						// A name of the caller's, at times with a value too big
						// to index, at times one longer than a 7-bit length.
						add(fmt.Sprintf("x-h%d", rng.IntN(50)), strings.Repeat("v", []int{1, 126, 127, 128, 254, 255, 256, 3000, 127 + 128*128}[rng.IntN(9)]))
					default:
						add(fmt.Sprintf("x-new-%d", block), fmt.Sprint(rng.Uint64()))
					}
				}
				b := enc.begin(nil)
				for _, f := range want {
					b = enc.field(b, f.Name, f.Value)
				}
				// A table size that changed is signaled first thing: down to
				// at most the least the upstream allowed meanwhile, then to
				// the size in use. Else the upstream's table could hold more
				// than it allows.
				if updates := leadingSizeUpdates(t, b); enc.max != before || allowed < before {
					if len(updates) == 0 || updates[0] > uint64(allowed) || updates[len(updates)-1] != uint64(enc.max) {
						t.Fatalf("block %d: table size %d -> %d (allowed down to %d) signaled as %v", block, before, enc.max, allowed, updates)
					}
				} else if len(updates) > 0 {
					t.Fatalf("block %d: table size updates %v, but the size did not change", block, updates)
				}
				got, err := dec.DecodeFull(b)
				if err != nil {
					t.Fatalf("block %d: %v", block, err)
				}
				if len(got) != len(want) {
					t.Fatalf("block %d: decoded %d fields, want %d", block, len(got), len(want))
				}
				for i := range want {
					if got[i].Name != want[i].Name || got[i].Value != want[i].Value {
						t.Fatalf("block %d field %d: decoded %s: %.40q, want %s: %.40q", block, i, got[i].Name, got[i].Value, want[i].Name, want[i].Value)
					}
				}
				for f := range enc.seq {
					if hpackVolatile(f.name) {
						t.Fatalf("block %d: %s, which changes every call, was indexed", block, f.name)
					}
				}
				// However much the upstream offers, a connection's table
				// stays within the default: its memory is the gateway's.
				if enc.size > enc.max || enc.max > hpackDefaultTable {
					t.Fatalf("block %d: table holds %d bytes of %d", block, enc.size, enc.max)
				}
			}
		})
	}
}

// leadingSizeUpdates reads the dynamic table size updates that begin a
// header block (RFC 7541 §6.3).
func leadingSizeUpdates(t *testing.T, b []byte) []uint64 {
	t.Helper()
	var sizes []uint64
	for len(b) > 0 && b[0]&0xe0 == 0x20 {
		v := uint64(b[0] & 0x1f)
		b = b[1:]
		if v == 0x1f {
			for shift := 0; ; shift += 7 {
				if len(b) == 0 {
					t.Fatal("a table size update is cut short")
				}
				c := b[0]
				b = b[1:]
				v += uint64(c&0x7f) << shift
				if c&0x80 == 0 {
					break
				}
			}
		}
		sizes = append(sizes, v)
	}
	return sizes
}

// TestHPACKEncoderRepeats checks what the compression is for: once a
// connection's first call has gone, a call repeats its fields by index and
// sends only what is new to it, so that neither side's table churns.
func TestHPACKEncoderRepeats(t *testing.T) {
	token := strings.Repeat("t", 290)
	enc := newHPACKEncoder()
	dec := hpack.NewDecoder(hpackDefaultTable, nil)
	call := func(id int) []byte {
		b := enc.begin(nil)
		for _, f := range [][2]string{
			{":method", "POST"}, {":scheme", "http"}, {":path", "/a.B/C"}, {":authority", "127.0.0.1:1"},
			{"content-type", "application/grpc+proto"}, {"user-agent", "flowgate"}, {"te", "trailers"},
			{"grpc-timeout", fmt.Sprintf("%05dm", id)}, {"x-request-id", fmt.Sprintf("%032x", id)}, {"x-flowgate-token", token},
		} {
			b = enc.field(b, f[0], f[1])
		}
		if _, err := dec.DecodeFull(b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := call(0)
	if !bytes.Contains(first, []byte(token)) {
		t.Fatal("the first call does not carry the token")
	}
	size := len(call(1))
	for i := 2; i < 1000; i++ {
		b := call(i)
		if bytes.Contains(b, []byte(token)) {
			t.Fatalf("call %d sent the token again: the table churned", i)
		}
		if len(b) != size {
			t.Fatalf("call %d: a block of %d bytes, call 1's was %d", i, len(b), size)
		}
	}
	// Six indexes, two static ones, and two literals with their names.
	if want := 8 + 2 + len("grpc-timeout") + 1 + 6 + 2 + len("x-request-id") + 1 + 32; size > want {
		t.Errorf("a repeated call's block is %d bytes, want at most %d", size, want)
	}
}
