package server

// hpackEncoder is the header compression of the upstream client's
// connections (RFC 7541, encoding only; the reader decodes with x/net's
// decoder). x/net's encoder cost about 1,100 instructions a field: for
// every field it searched the static and the dynamic table (up to four
// map lookups, each hashing the name and the whole value), Huffman-coded
// every literal, and indexed every field, the per-call ones included. A
// request id and a deadline new on every call then went into the table on
// both sides and pushed out what repeats, the identity token among it, to
// be sent and decoded again.
//
// This encoder knows which fields repeat:
//   - :method POST and :scheme http are the static table's;
//   - the fields that change on every call (request id, deadline, trace
//     context, idempotency key) are literals without indexing, so that the
//     table on both sides never changes because of them;
//   - every other field goes into the dynamic table the first time it is
//     sent and is one index from then on, found by one map lookup.
//
// Literals are sent raw rather than Huffman-coded: on a connection to a
// backend, bytes are cheaper than the coding on both sides.
type hpackEncoder struct {
	// max is the table size in use, at most the upstream's
	// SETTINGS_HEADER_TABLE_SIZE and never over the protocol's default.
	max  uint32
	size uint32
	// ents holds the entries from the oldest, ents[head], to the newest;
	// entry i of ents was inserted as number evicted+i-head+1.
	ents    []hpackEntry
	head    int
	evicted uint64
	// seq maps a field in the table to its insertion number.
	seq map[hpackEntry]uint64
	// signaled is the size the upstream's table has, as last signaled;
	// lowest the least the upstream allowed since the last block. When
	// that is below signaled, or max is not signaled, the next block
	// begins with a size update (RFC 7541 §4.2).
	signaled, lowest uint32
}

type hpackEntry struct{ name, value string }

// hpackDefaultTable is SETTINGS_HEADER_TABLE_SIZE's initial value.
const hpackDefaultTable = 4096

func newHPACKEncoder() *hpackEncoder {
	return &hpackEncoder{max: hpackDefaultTable, signaled: hpackDefaultTable, lowest: hpackDefaultTable, seq: map[hpackEntry]uint64{}}
}

// setMaxTable takes the upstream's SETTINGS_HEADER_TABLE_SIZE.
func (e *hpackEncoder) setMaxTable(v uint32) {
	v = min(v, hpackDefaultTable)
	e.lowest = min(e.lowest, v)
	e.max = v
	e.evictTo(v)
}

// begin starts a header block: the size update owed, if any.
func (e *hpackEncoder) begin(b []byte) []byte {
	if e.lowest >= e.signaled && e.max == e.signaled {
		return b
	}
	if e.lowest < e.max {
		// The upstream allowed less than max meanwhile: the update must
		// go down to at most that first. It goes to 0, since x/net's
		// decoder refuses a second update while its table holds anything.
		e.evictTo(0)
		b = appendHPACKInt(b, 0x20, 5, 0)
	}
	e.signaled, e.lowest = e.max, e.max
	return appendHPACKInt(b, 0x20, 5, uint64(e.max))
}

// hpackVolatile names the fields that change on every call.
func hpackVolatile(name string) bool {
	switch name {
	case "x-request-id", "grpc-timeout", "traceparent", "tracestate", "idempotency-key":
		return true
	}
	return false
}

// field appends one header field; name is lower-case.
func (e *hpackEncoder) field(b []byte, name, value string) []byte {
	switch {
	case name == ":method" && value == "POST":
		return append(b, 0x83)
	case name == ":scheme" && value == "http":
		return append(b, 0x86)
	case hpackVolatile(name):
		return appendHPACKLiteral(b, 0x00, 4, name, value)
	}
	f := hpackEntry{name, value}
	if s, ok := e.seq[f]; ok {
		// The newest entry is index 62, the first after the static table.
		return appendHPACKInt(b, 0x80, 7, 62+e.inserted()-s)
	}
	size := hpackSize(name, value)
	// A field of over half the table would push out most of what repeats.
	if size > e.max/2 {
		return appendHPACKLiteral(b, 0x00, 4, name, value)
	}
	b = appendHPACKLiteral(b, 0x40, 6, name, value)
	e.evictTo(e.max - size)
	e.ents = append(e.ents, f)
	e.size += size
	e.seq[f] = e.inserted()
	return b
}

// inserted is the number of the newest entry: how many were ever inserted.
func (e *hpackEncoder) inserted() uint64 { return e.evicted + uint64(len(e.ents)-e.head) }

// appendHPACKLiteral appends a literal field: with incremental indexing (0x40, a
// 6-bit prefix) or without (0x00, 4 bits). The names the client sends
// that the static table holds are sent by index.
func appendHPACKLiteral(b []byte, first byte, prefix uint8, name, value string) []byte {
	idx := uint64(0)
	switch name {
	case ":authority":
		idx = 1
	case ":path":
		idx = 4
	case "content-type":
		idx = 31
	case "user-agent":
		idx = 58
	}
	b = appendHPACKInt(b, first, prefix, idx)
	if idx == 0 {
		b = appendHPACKString(b, name)
	}
	return appendHPACKString(b, value)
}

// evictTo drops the oldest entries until the table holds at most limit.
func (e *hpackEncoder) evictTo(limit uint32) {
	for e.size > limit && e.head < len(e.ents) {
		f := e.ents[e.head]
		e.ents[e.head] = hpackEntry{}
		e.head++
		e.evicted++
		e.size -= hpackSize(f.name, f.value)
		if e.seq[f] == e.evicted {
			delete(e.seq, f)
		}
	}
	if e.head == len(e.ents) {
		e.ents, e.head = e.ents[:0], 0
	} else if e.head > 32 && e.head > len(e.ents)/2 {
		n := copy(e.ents, e.ents[e.head:])
		clear(e.ents[n:])
		e.ents, e.head = e.ents[:n], 0
	}
}

// hpackSize is an entry's size as the table counts it (RFC 7541 §4.1).
func hpackSize(name, value string) uint32 {
	return uint32(len(name) + len(value) + 32) //nolint:gosec // header sizes are bounded far below
}

// appendHPACKInt appends v as an HPACK integer with an n-bit prefix,
// the rest of the first byte being first (RFC 7541 §5.1).
func appendHPACKInt(b []byte, first byte, n uint8, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(limit))
	v -= limit
	for v >= 128 {
		b = append(b, byte(v&0x7f)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// appendHPACKString appends s as a raw (not Huffman-coded) string.
func appendHPACKString(b []byte, s string) []byte {
	b = appendHPACKInt(b, 0, 7, uint64(len(s)))
	return append(b, s...)
}
