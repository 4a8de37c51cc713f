package server

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// h2Client makes the unary calls of one cleartext gRPC upstream over an
// HTTP/2 connection of its own. A profile put grpc-go's client at over a
// third of a forwarded call: two goroutine hand-offs per call (to its
// writer and back from its reader), a stream object with channels and
// buffers of its own, and metadata copied twice. This client writes a
// call's frames from the caller's goroutine in one system call and wakes
// the caller once from its reader.
//
// It takes a call only where it cannot differ from grpc-go: on a connection
// that is up, for a request that fits the upstream's flow-control windows
// at once, while the upstream accepts more streams. Anything else (no
// connection yet or a failed one, a large request, a stream the upstream
// refused or never began) is left to grpc-go's client, which dials, backs
// off, and streams large messages. Server streams always use grpc-go.
type h2Client struct {
	addr        string // host:port
	dialTimeout time.Duration
	maxRecv     int
	cur         atomic.Pointer[h2Conn]
	dialing     atomic.Bool
	// nextDial (unix nanoseconds) spaces out dials after a failed one.
	nextDial atomic.Int64
	closed   atomic.Bool
	mu       sync.Mutex // guards conns
	conns    map[*h2Conn]struct{}
	// sent counts the calls this client sent; left, those it left to
	// grpc-go's client. Both are read by the metrics when scraped.
	sent, left atomic.Int64
	// keepaliveTime and keepaliveTimeout are h2KeepaliveTime and
	// h2KeepaliveTimeout but in tests.
	keepaliveTime, keepaliveTimeout time.Duration
}

// h2Redial is how long the client waits after a failed dial before the
// next; calls meanwhile go through grpc-go, which keeps its own backoff.
const h2Redial = time.Second

// h2MaxHeaderList bounds a response's header block, as grpc-go's client
// does by default.
const h2MaxHeaderList = 16 << 20

// h2KeepaliveTime and h2KeepaliveTimeout are grpc-go's client keepalive
// settings in dialGRPC: a connection with calls in flight that has been
// silent this long is pinged, and closed if the ping is not answered.
const (
	h2KeepaliveTime    = 30 * time.Second
	h2KeepaliveTimeout = 10 * time.Second
)

// newH2Client returns the client of the upstream at addr, which starts
// connecting at once so that the first calls need not go through grpc-go.
func newH2Client(addr string, dialTimeout time.Duration, maxRecv int) *h2Client {
	c := &h2Client{
		addr: addr, dialTimeout: dialTimeout, maxRecv: maxRecv, conns: map[*h2Conn]struct{}{},
		keepaliveTime: h2KeepaliveTime, keepaliveTimeout: h2KeepaliveTimeout,
	}
	c.redial()
	return c
}

// errH2NotTaken reports that the client did not send a call, which grpc-go
// must make instead.
var errH2NotTaken = errors.New("h2: call not taken")

// unary makes one call, or returns errH2NotTaken without having sent it.
func (c *h2Client) unary(ctx context.Context, procedure string, in *connect.Request[frame]) (*upstreamReply, error) {
	cc := c.cur.Load()
	if cc == nil || !cc.usable() {
		c.redial()
		return nil, errH2NotTaken
	}
	return cc.roundTrip(ctx, procedure, in)
}

// redial starts a dial in the background unless one runs, the client is
// closed, or the last one failed too recently.
func (c *h2Client) redial() {
	if c.closed.Load() || time.Now().UnixNano() < c.nextDial.Load() {
		return
	}
	if !c.dialing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer c.dialing.Store(false)
		cc, err := c.dial()
		if err != nil {
			c.nextDial.Store(time.Now().Add(h2Redial).UnixNano())
			return
		}
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			cc.close(errors.New("client closed"))
			return
		}
		c.conns[cc] = struct{}{}
		c.mu.Unlock()
		for {
			prev := c.cur.Load()
			if prev != nil && prev.usable() {
				cc.drain() // another connection took the place meanwhile
				return
			}
			if c.cur.CompareAndSwap(prev, cc) {
				return
			}
		}
	}()
}

// close closes every connection; calls in flight on them fail.
func (c *h2Client) close() {
	c.closed.Store(true)
	c.mu.Lock()
	conns := make([]*h2Conn, 0, len(c.conns))
	for cc := range c.conns {
		conns = append(conns, cc)
	}
	c.mu.Unlock()
	for _, cc := range conns {
		cc.close(errors.New("client closed"))
	}
}

func (c *h2Client) forget(cc *h2Conn) {
	c.mu.Lock()
	delete(c.conns, cc)
	c.mu.Unlock()
	c.cur.CompareAndSwap(cc, nil)
}

// dial opens a connection and waits for the upstream's SETTINGS, which
// say how much the connection may carry.
func (c *h2Client) dial() (*h2Conn, error) {
	dialer := net.Dialer{Timeout: c.dialTimeout, KeepAlive: 30 * time.Second}
	nc, err := dialer.Dial("tcp", c.addr)
	if err != nil {
		return nil, err
	}
	cc := &h2Conn{
		client:       c,
		nc:           nc,
		bw:           bufio.NewWriterSize(nc, 16<<10),
		br:           bufio.NewReaderSize(nc, 16<<10),
		nextID:       1,
		sendWindow:   65535,
		streamWindow: 65535,
		maxFrame:     16384,
		maxStreams:   1<<31 - 1,
		streams:      map[uint32]*h2Stream{},
	}
	cc.fr = http2.NewFramer(cc.bw, cc.br)
	cc.fr.SetMaxReadFrameSize(16384)
	cc.henc = newHPACKEncoder()
	cc.hdec = hpack.NewDecoder(4096, cc.emit)
	cc.hdec.SetMaxStringLength(h2MaxHeaderList)

	_ = nc.SetDeadline(time.Now().Add(c.dialTimeout))
	if _, err := cc.bw.WriteString(http2.ClientPreface); err != nil {
		return nil, cc.abandon(err)
	}
	if err := cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: upstreamStreamWindow},
	); err != nil {
		return nil, cc.abandon(err)
	}
	if err := cc.fr.WriteWindowUpdate(0, upstreamConnWindow-65535); err != nil {
		return nil, cc.abandon(err)
	}
	if err := cc.bw.Flush(); err != nil {
		return nil, cc.abandon(err)
	}
	f, err := cc.fr.ReadFrame()
	if err != nil {
		return nil, cc.abandon(err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return nil, cc.abandon(fmt.Errorf("first frame from the upstream is %v, not SETTINGS", f.Header().Type))
	}
	if err := cc.applySettings(sf); err != nil {
		return nil, cc.abandon(err)
	}
	if err := cc.fr.WriteSettingsAck(); err != nil {
		return nil, cc.abandon(err)
	}
	if err := cc.bw.Flush(); err != nil {
		return nil, cc.abandon(err)
	}
	_ = nc.SetDeadline(time.Time{})
	cc.keepalive = time.AfterFunc(c.keepaliveTime, cc.checkAlive)
	go cc.readLoop()
	return cc, nil
}

// h2Conn is one HTTP/2 connection to the upstream.
type h2Conn struct {
	client *h2Client
	nc     net.Conn

	// wmu serializes writes and guards what writers decide by: the
	// upstream's settings and windows, the next stream id, the state.
	wmu          sync.Mutex
	bw           *bufio.Writer
	fr           *http2.Framer
	henc         *hpackEncoder
	hbuf         []byte
	nextID       uint32
	sendWindow   int64 // the connection's send window
	streamWindow int64 // a new stream's send window
	maxFrame     int
	maxStreams   uint32
	// flushing is set while a writer yields before it flushes.
	flushing bool

	// smu guards the streams in flight.
	smu     sync.Mutex
	streams map[uint32]*h2Stream
	// goaway is set once the upstream said it takes no more streams, dead
	// once the connection failed; either stops new calls.
	goaway atomic.Bool
	dead   atomic.Bool
	err    error // why it died, under smu

	// The reader's own state.
	br          *bufio.Reader
	hdec        *hpack.Decoder
	hstream     *h2Stream // the stream whose header block is being read
	htrailer    bool      // whether that block ends the stream
	hsize       int
	connUnacked int
	heard       atomic.Bool // a frame arrived since the last keepalive check
	keepalive   *time.Timer
	pinged      bool
}

// h2Stream is one call in flight. The reader fills it in and closes done;
// the caller reads it after that.
type h2Stream struct {
	id   uint32
	done chan struct{}
	// err is a failure of the call itself; refused means the upstream
	// never began it.
	err     error
	refused bool

	gotHeaders  bool
	httpStatus  string
	contentType string
	grpcCT      bool
	grpcStatus  string
	hasStatus   bool
	grpcMessage string
	details     []string
	encoding    string
	headerErr   string
	tooBig      bool
	extra       bool
	header      http.Header
	trailer     http.Header
	buf         []byte
	msgLen      int // the response message's length, once its prefix arrived
	haveLen     bool
	unacked     int // bytes received and not yet returned to the stream's window
}

func (cc *h2Conn) usable() bool { return !cc.goaway.Load() && !cc.dead.Load() }

// abandon closes a connection that never got going.
func (cc *h2Conn) abandon(err error) error {
	_ = cc.nc.Close()
	return err
}

// write runs fn under wmu and then sees the frames it wrote flushed. A
// small write first yields once, as grpc-go's writer does, so that the
// calls that are ready to send add their frames and all go out in one
// system call: the upstream then reads many calls at a time, where one
// write per call cost it a tenth more CPU per call.
func (cc *h2Conn) write(fn func() error) error {
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if cc.dead.Load() {
		return cc.deadErr()
	}
	err := fn()
	switch {
	case err == errH2NotTaken: //nolint:errorlint // a sentinel of this file, never wrapped
		return err
	case err != nil:
	case cc.flushing:
		// The writer that yields flushes these frames with its own.
	case cc.bw.Buffered() < h2MinBatch:
		cc.flushing = true
		cc.wmu.Unlock()
		runtime.Gosched()
		cc.wmu.Lock()
		cc.flushing = false
		if !cc.dead.Load() {
			err = cc.flush()
		}
	default:
		err = cc.flush()
	}
	if err != nil {
		// Only writing fails here: the connection is broken.
		go cc.close(err)
	}
	return err
}

// h2MinBatch is the size under which a write waits for others to join it
// (grpc-go's minBatchSize).
const h2MinBatch = 1000

// flush writes what is buffered, within the write timeout grpc-go's
// keepalive would give a stuck upstream.
func (cc *h2Conn) flush() error {
	if cc.bw.Buffered() == 0 {
		return nil
	}
	_ = cc.nc.SetWriteDeadline(time.Now().Add(cc.client.keepaliveTime + cc.client.keepaliveTimeout))
	return cc.bw.Flush()
}

func (cc *h2Conn) deadErr() error {
	cc.smu.Lock()
	defer cc.smu.Unlock()
	return cc.err
}

// roundTrip sends a call and waits for its answer.
func (cc *h2Conn) roundTrip(ctx context.Context, procedure string, in *connect.Request[frame]) (*upstreamReply, error) {
	if err := ctx.Err(); err != nil {
		return nil, contextError(err)
	}
	header := in.Header()
	// The headers are checked before any is encoded: the encoder's table
	// must hold only fields the upstream is sent.
	if err := checkMetadata(header); err != nil {
		return nil, err
	}
	msg := in.Msg.data
	need := int64(len(msg) + 5)
	st := &h2Stream{done: make(chan struct{})}
	err := cc.write(func() error {
		if !cc.usable() || need > cc.sendWindow || need > cc.streamWindow {
			return errH2NotTaken
		}
		if cc.nextID > 1<<31-1 {
			// Stream ids are spent: the next call opens a new connection.
			go cc.drain()
			return errH2NotTaken
		}
		cc.smu.Lock()
		full := uint32(len(cc.streams)) >= cc.maxStreams //nolint:gosec // a count of streams
		if !full {
			st.id = cc.nextID
			cc.nextID += 2
			cc.streams[st.id] = st
		}
		cc.smu.Unlock()
		if full {
			return errH2NotTaken
		}
		cc.hbuf = cc.encodeHeaders(ctx, cc.hbuf[:0], procedure, header)
		if err := cc.writeHeaders(st.id, cc.hbuf); err != nil {
			return err
		}
		cc.sendWindow -= need
		return cc.writeData(st.id, msg)
	})
	if err == errH2NotTaken || (err != nil && st.id == 0) { //nolint:errorlint // a sentinel of this file, never wrapped
		// Nothing was sent.
		return nil, errH2NotTaken
	}
	cc.client.sent.Add(1)
	// A failed write fails the connection, and with it the stream.
	select {
	case <-st.done:
	case <-ctx.Done():
		cc.cancel(st)
		return nil, contextError(ctx.Err())
	}
	if st.refused {
		return nil, errH2NotTaken
	}
	reply, err := st.result(cc.client.maxRecv)
	if err != nil && ctx.Err() != nil {
		// As grpcError words it: a call whose context ended failed for
		// that, whatever the connection said meanwhile.
		return nil, contextError(ctx.Err())
	}
	return reply, err
}

// checkMetadata refuses request headers gRPC metadata cannot carry, on
// either client: binary (-bin) values must be base64, others printable
// ASCII, which grpc-go would otherwise refuse with an error of its own.
func checkMetadata(header http.Header) error {
	for name, vals := range header {
		binary := strings.HasSuffix(lowerName(name), "-bin")
		for _, v := range vals {
			if binary {
				if _, err := connect.DecodeBinaryHeader(v); err != nil {
					return &wireError{connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("header %s: invalid binary value", name))}
				}
			} else if !printableASCII(v) {
				return &wireError{connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("header %s: value must be printable ASCII", name))}
			}
		}
	}
	return nil
}

// encodeHeaders appends a call's HPACK-encoded header block to b: what
// grpc-go's client sends, with the request's headers (checked by
// checkMetadata) as metadata.
func (cc *h2Conn) encodeHeaders(ctx context.Context, b []byte, procedure string, header http.Header) []byte {
	enc := cc.henc
	b = enc.begin(b)
	b = enc.field(b, ":method", "POST")
	b = enc.field(b, ":scheme", "http")
	b = enc.field(b, ":path", procedure)
	b = enc.field(b, ":authority", cc.client.addr)
	b = enc.field(b, "content-type", "application/grpc+proto")
	b = enc.field(b, "user-agent", "flowgate")
	b = enc.field(b, "te", "trailers")
	if deadline, ok := ctx.Deadline(); ok {
		b = enc.field(b, "grpc-timeout", encodeGRPCTimeout(time.Until(deadline)))
	}
	for name, vals := range header {
		key := lowerName(name)
		if isReservedGRPCHeader(key) {
			continue
		}
		binary := strings.HasSuffix(key, "-bin")
		for _, v := range vals {
			if binary {
				// grpc-go sends binary values unpadded, however they came.
				raw, _ := connect.DecodeBinaryHeader(v)
				v = connect.EncodeBinaryHeader(raw)
			}
			b = enc.field(b, key, v)
		}
	}
	return b
}

// writeHeaders writes a header block as HEADERS and, past the upstream's
// frame size, CONTINUATION frames.
func (cc *h2Conn) writeHeaders(id uint32, block []byte) error {
	first := block
	if len(first) > cc.maxFrame {
		first = first[:cc.maxFrame]
	}
	block = block[len(first):]
	if err := cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		chunk := block
		if len(chunk) > cc.maxFrame {
			chunk = chunk[:cc.maxFrame]
		}
		block = block[len(chunk):]
		if err := cc.fr.WriteContinuation(id, len(block) == 0, chunk); err != nil {
			return err
		}
	}
	return nil
}

// writeData writes msg as one gRPC message in DATA frames that end the
// stream. The frames are written by hand so that the message is not copied
// behind its prefix.
func (cc *h2Conn) writeData(id uint32, msg []byte) error {
	var prefix [5]byte
	binary.BigEndian.PutUint32(prefix[1:], uint32(len(msg))) //nolint:gosec // bounded by the window checked
	rest := msg
	first := true
	for {
		room := cc.maxFrame
		if first {
			room -= len(prefix)
		}
		chunk := rest
		if len(chunk) > room {
			chunk = chunk[:room]
		}
		rest = rest[len(chunk):]
		size := len(chunk)
		if first {
			size += len(prefix)
		}
		var head [9]byte
		head[0], head[1], head[2] = byte(size>>16), byte(size>>8), byte(size)
		head[3] = byte(http2.FrameData)
		if len(rest) == 0 {
			head[4] = byte(http2.FlagDataEndStream)
		}
		binary.BigEndian.PutUint32(head[5:], id)
		if _, err := cc.bw.Write(head[:]); err != nil {
			return err
		}
		if first {
			if _, err := cc.bw.Write(prefix[:]); err != nil {
				return err
			}
			first = false
		}
		if _, err := cc.bw.Write(chunk); err != nil {
			return err
		}
		if len(rest) == 0 {
			return nil
		}
	}
}

// cancel ends a call its caller left: the upstream is told to stop.
func (cc *h2Conn) cancel(st *h2Stream) {
	if !cc.remove(st.id) {
		return // it had ended
	}
	_ = cc.write(func() error { return cc.fr.WriteRSTStream(st.id, http2.ErrCodeCancel) })
}

// remove takes a stream out of the connection, reporting whether it was
// still in it. A connection told to go away closes with its last stream.
func (cc *h2Conn) remove(id uint32) bool {
	cc.smu.Lock()
	_, ok := cc.streams[id]
	delete(cc.streams, id)
	idle := len(cc.streams) == 0
	cc.smu.Unlock()
	if ok && idle && cc.goaway.Load() {
		go cc.close(errors.New("upstream went away"))
	}
	return ok
}

// finish ends a stream with what it got.
func (cc *h2Conn) finish(st *h2Stream) { cc.end(st, nil, false) }

// end ends a stream with a failure of the call, or as one the upstream
// never began. Only the goroutine that takes the stream out of the
// connection writes these: the reader and close may both try.
func (cc *h2Conn) end(st *h2Stream, err error, refused bool) {
	if cc.remove(st.id) {
		st.err, st.refused = err, refused
		close(st.done)
	}
}

// close fails the connection and every call in flight on it.
func (cc *h2Conn) close(err error) {
	cc.smu.Lock()
	if cc.dead.Swap(true) {
		cc.smu.Unlock()
		return
	}
	cc.err = connect.NewError(connect.CodeUnavailable, fmt.Errorf("connection error: %w", err))
	streams := cc.streams
	cc.streams = map[uint32]*h2Stream{}
	cc.smu.Unlock()
	if cc.keepalive != nil {
		cc.keepalive.Stop()
	}
	_ = cc.nc.Close()
	for _, st := range streams {
		st.err = cc.err
		close(st.done)
	}
	cc.client.forget(cc)
}

// drain stops new calls on a connection and closes it once idle.
func (cc *h2Conn) drain() {
	cc.goaway.Store(true)
	cc.smu.Lock()
	idle := len(cc.streams) == 0
	cc.smu.Unlock()
	if idle {
		cc.close(errors.New("connection replaced"))
	}
}

// checkAlive pings a connection that has calls in flight and has been
// silent for h2KeepaliveTime, and closes it when the ping goes unanswered.
func (cc *h2Conn) checkAlive() {
	if cc.dead.Load() {
		return
	}
	if cc.heard.Swap(false) {
		cc.pinged = false
		cc.keepalive.Reset(cc.client.keepaliveTime)
		return
	}
	if cc.pinged {
		cc.close(errors.New("keepalive ping not answered"))
		return
	}
	cc.smu.Lock()
	busy := len(cc.streams) > 0
	cc.smu.Unlock()
	if !busy {
		cc.keepalive.Reset(cc.client.keepaliveTime)
		return
	}
	cc.pinged = true
	_ = cc.write(func() error { return cc.fr.WritePing(false, [8]byte{'f', 'l', 'o', 'w', 'g', 'a', 't', 'e'}) })
	cc.keepalive.Reset(cc.client.keepaliveTimeout)
}

func (cc *h2Conn) stream(id uint32) *h2Stream {
	cc.smu.Lock()
	st := cc.streams[id]
	cc.smu.Unlock()
	return st
}

// readLoop reads the upstream's frames until the connection fails.
func (cc *h2Conn) readLoop() {
	for {
		f, err := cc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.resetStream(se.StreamID, se.Code, fmt.Errorf("stream error: %w", err))
				continue
			}
			cc.close(fmt.Errorf("error reading from server: %w", err))
			return
		}
		cc.heard.Store(true)
		if err := cc.handle(f); err != nil {
			_ = cc.write(func() error { return cc.fr.WriteGoAway(0, http2.ErrCodeProtocol, nil) })
			cc.close(err)
			return
		}
	}
}

func (cc *h2Conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.HeadersFrame:
		return cc.onHeaders(f.StreamID, f.HeaderBlockFragment(), f.HeadersEnded(), f.StreamEnded())
	case *http2.ContinuationFrame:
		return cc.onHeaderBlock(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.RSTStreamFrame:
		if st := cc.stream(f.StreamID); st != nil {
			if f.ErrCode == http2.ErrCodeRefusedStream {
				cc.end(st, nil, true)
			} else {
				cc.end(st, rstError(f.ErrCode), false)
			}
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		var err error
		werr := cc.write(func() error {
			if err = cc.applySettings(f); err != nil {
				return nil
			}
			return cc.fr.WriteSettingsAck()
		})
		if err != nil {
			return err
		}
		return werr
	case *http2.PingFrame:
		if !f.IsAck() {
			return cc.write(func() error { return cc.fr.WritePing(true, f.Data) })
		}
	case *http2.GoAwayFrame:
		cc.onGoAway(f.LastStreamID)
	case *http2.WindowUpdateFrame:
		cc.wmu.Lock()
		defer cc.wmu.Unlock()
		if f.StreamID == 0 {
			cc.sendWindow += int64(f.Increment)
			if cc.sendWindow > 1<<31-1 {
				return errors.New("flow control window overflow")
			}
		}
	case *http2.PushPromiseFrame:
		return errors.New("push promise, with push disabled")
	}
	return nil
}

// applySettings takes the upstream's settings; wmu is held, or the
// connection is not yet shared.
func (cc *h2Conn) applySettings(f *http2.SettingsFrame) error {
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			cc.streamWindow = int64(s.Val)
		case http2.SettingMaxFrameSize:
			cc.maxFrame = int(s.Val)
		case http2.SettingMaxConcurrentStreams:
			cc.maxStreams = s.Val
		case http2.SettingHeaderTableSize:
			cc.henc.setMaxTable(s.Val)
		}
		return nil
	})
}

// onGoAway stops new calls; calls the upstream never began go to grpc-go.
func (cc *h2Conn) onGoAway(last uint32) {
	cc.goaway.Store(true)
	cc.client.redial()
	cc.smu.Lock()
	var refused []*h2Stream
	for id, st := range cc.streams {
		if id > last {
			refused = append(refused, st)
		}
	}
	cc.smu.Unlock()
	for _, st := range refused {
		cc.end(st, nil, true)
	}
	cc.smu.Lock()
	idle := len(cc.streams) == 0
	cc.smu.Unlock()
	if idle {
		cc.close(errors.New("upstream went away"))
	}
}

// resetStream ends a stream the upstream broke the protocol on.
func (cc *h2Conn) resetStream(id uint32, code http2.ErrCode, err error) {
	if st := cc.stream(id); st != nil {
		cc.end(st, connect.NewError(connect.CodeInternal, err), false)
	}
	_ = cc.write(func() error { return cc.fr.WriteRSTStream(id, code) })
}

func (cc *h2Conn) onData(f *http2.DataFrame) error {
	// The connection's window is returned for every byte, whether or not
	// the stream still wants them; a quarter at a time, as grpc-go does.
	cc.connUnacked += int(f.Header().Length)
	if cc.connUnacked >= upstreamConnWindow/4 {
		n := cc.connUnacked
		cc.connUnacked = 0
		if err := cc.write(func() error { return cc.fr.WriteWindowUpdate(0, uint32(n)) }); err != nil { //nolint:gosec // at most the window
			return err
		}
	}
	st := cc.stream(f.StreamID)
	if st == nil {
		return nil
	}
	if !st.gotHeaders {
		cc.end(st, connect.NewError(connect.CodeInternal, errors.New("protocol error: DATA before HEADERS")), false)
		return cc.write(func() error { return cc.fr.WriteRSTStream(st.id, http2.ErrCodeProtocol) })
	}
	data := f.Data()
	st.buf = append(st.buf, data...)
	if !st.haveLen && len(st.buf) >= 5 {
		st.haveLen = true
		st.msgLen = int(binary.BigEndian.Uint32(st.buf[1:5]))
		if st.msgLen > cc.client.maxRecv {
			st.tooBig = true
			cc.finish(st)
			return cc.write(func() error { return cc.fr.WriteRSTStream(st.id, http2.ErrCodeCancel) })
		}
		if need := 5 + st.msgLen; cap(st.buf) < need {
			buf := make([]byte, len(st.buf), need)
			copy(buf, st.buf)
			st.buf = buf
		}
	}
	if st.haveLen && len(st.buf) > 5+st.msgLen {
		// A second message: grpc-go fails the call as it arrives.
		st.extra = true
		cc.finish(st)
		return cc.write(func() error { return cc.fr.WriteRSTStream(st.id, http2.ErrCodeCancel) })
	}
	if f.StreamEnded() {
		cc.end(st, connect.NewError(connect.CodeInternal, errors.New("server closed the stream without sending trailers")), false)
		return nil
	}
	st.unacked += int(f.Header().Length)
	if st.unacked >= upstreamStreamWindow/4 {
		n := st.unacked
		st.unacked = 0
		return cc.write(func() error { return cc.fr.WriteWindowUpdate(st.id, uint32(n)) }) //nolint:gosec // at most the window
	}
	return nil
}

// onHeaders starts reading a header block: the response's headers, or its
// trailers when the frame ends the stream.
func (cc *h2Conn) onHeaders(id uint32, block []byte, ended, endStream bool) error {
	st := cc.stream(id)
	cc.hstream, cc.htrailer, cc.hsize = st, endStream, 0
	if st != nil {
		if st.gotHeaders && !endStream {
			st.headerErr = "a HEADERS frame cannot appear in the middle of a stream"
		}
		if !endStream {
			st.gotHeaders = true
		}
	}
	return cc.onHeaderBlock(block, ended)
}

// onHeaderBlock decodes a fragment of a header block. Every block is
// decoded, even a stream's that ended, to keep the decoder's table in step.
func (cc *h2Conn) onHeaderBlock(block []byte, ended bool) error {
	if _, err := cc.hdec.Write(block); err != nil {
		return fmt.Errorf("header block: %w", err)
	}
	if !ended {
		return nil
	}
	if err := cc.hdec.Close(); err != nil {
		return fmt.Errorf("header block: %w", err)
	}
	st := cc.hstream
	cc.hstream = nil
	if st == nil {
		return nil
	}
	if st.headerErr == "" && !cc.htrailer && !st.grpcCT && strings.HasPrefix(st.httpStatus, "1") {
		// An informational answer: the real one follows.
		st.gotHeaders = false
		return nil
	}
	if cc.htrailer || st.headerErr != "" || !st.grpcCT {
		// A stream whose headers are wrong ends here; grpc-go would wait
		// for the rest of a non-gRPC body only to word its error.
		done := !cc.htrailer
		cc.finish(st)
		if done {
			return cc.write(func() error { return cc.fr.WriteRSTStream(st.id, http2.ErrCodeCancel) })
		}
	}
	return nil
}

// emit takes one decoded header field.
func (cc *h2Conn) emit(hf hpack.HeaderField) {
	st := cc.hstream
	if st == nil {
		return
	}
	cc.hsize += int(hf.Size())
	if cc.hsize > h2MaxHeaderList {
		st.headerErr = "peer header list size exceeded limit"
		return
	}
	switch hf.Name {
	case ":status":
		st.httpStatus = hf.Value
		return
	case "content-type":
		st.contentType = hf.Value
		if validGRPCContentType(hf.Value) {
			st.grpcCT = true
		}
		return
	case "grpc-encoding":
		st.encoding = hf.Value
		return
	case "grpc-status", "grpc-message", "grpc-status-details-bin":
		// Only the block that ends the stream carries the status.
		if cc.htrailer {
			cc.statusField(st, hf)
		}
		return
	}
	if isReservedGRPCHeader(hf.Name) {
		return
	}
	value := hf.Value
	if strings.HasSuffix(hf.Name, "-bin") {
		raw, err := connect.DecodeBinaryHeader(value)
		if err != nil {
			st.headerErr = fmt.Sprintf("transport: malformed %s: %v", hf.Name, err)
			return
		}
		value = connect.EncodeBinaryHeader(raw)
	}
	name := canonicalName(hf.Name)
	if neverForwarded(name) {
		return
	}
	dst := &st.header
	if cc.htrailer {
		dst = &st.trailer
	}
	if *dst == nil {
		*dst = make(http.Header, 2)
	}
	(*dst)[name] = append((*dst)[name], value)
}

// statusField takes one of the fields that make the call's status.
func (cc *h2Conn) statusField(st *h2Stream, hf hpack.HeaderField) {
	switch hf.Name {
	case "grpc-status":
		st.grpcStatus, st.hasStatus = hf.Value, true
	case "grpc-message":
		st.grpcMessage = decodeGRPCMessage(hf.Value)
	default:
		raw, err := connect.DecodeBinaryHeader(hf.Value)
		if err != nil {
			st.headerErr = fmt.Sprintf("transport: malformed %s: %v", hf.Name, err)
			return
		}
		st.details = append(st.details, string(raw))
	}
}

// result is the call's outcome as grpc-go's client would give it, in the
// forwarder's terms (see grpcError).
func (st *h2Stream) result(maxRecv int) (*upstreamReply, error) {
	if st.err != nil {
		return nil, st.err
	}
	if st.extra {
		return nil, statusError(status.New(codes.Internal, "cardinality violation: expected <EOF> for non server-streaming RPCs, but received another message"), nil)
	}
	if st.tooBig {
		return nil, statusError(status.Newf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", st.msgLen, maxRecv), nil)
	}
	if !st.grpcCT {
		return nil, statusError(nonGRPCStatus(st.httpStatus, st.contentType), nil)
	}
	if st.headerErr != "" {
		return nil, statusError(status.New(codes.Internal, st.headerErr), nil)
	}
	code := codes.Unknown
	if st.hasStatus {
		n, err := strconv.ParseInt(st.grpcStatus, 10, 32)
		if err != nil {
			return nil, statusError(status.Newf(codes.Unknown, "transport: malformed grpc-status: %v", err), nil)
		}
		code = codes.Code(uint32(n)) //nolint:gosec // as grpc-go converts it
	}
	if code != codes.OK {
		return nil, statusError(statusWithDetails(code, st.grpcMessage, st.details), st.trailer)
	}
	msg, err := st.message()
	if err != nil {
		return nil, err
	}
	return &upstreamReply{msg: &frame{data: msg}, header: st.header, trailer: st.trailer}, nil
}

// message is the one message of a successful answer.
func (st *h2Stream) message() ([]byte, error) {
	if len(st.buf) == 0 {
		return nil, statusError(status.New(codes.Internal, "cardinality violation: received no response message from non-server-streaming RPC"), nil)
	}
	if len(st.buf) < 5 || len(st.buf) < 5+st.msgLen {
		return nil, statusError(status.New(codes.Internal, io.ErrUnexpectedEOF.Error()), nil)
	}
	msg := st.buf[5 : 5+st.msgLen : 5+st.msgLen]
	if st.buf[0]&1 == 0 {
		return msg, nil
	}
	// grpc-go's client has no decompressor registered in the gateway
	// (it asks for none), and fails a compressed answer so.
	if st.encoding == "" || st.encoding == "identity" {
		return nil, statusError(status.New(codes.Internal, "grpc: compressed flag set with identity or empty encoding"), nil)
	}
	return nil, statusError(status.Newf(codes.Internal, "grpc: Decompressor is not installed for grpc-encoding %q", st.encoding), nil)
}

// statusWithDetails is the status grpc-go makes of grpc-status,
// grpc-message and grpc-status-details-bin.
func statusWithDetails(code codes.Code, message string, details []string) *status.Status {
	if len(details) != 1 {
		return status.New(code, message)
	}
	sp := new(spb.Status)
	if err := proto.Unmarshal([]byte(details[0]), sp); err != nil {
		return status.New(code, message)
	}
	if sp.GetCode() != int32(code) { //nolint:gosec // codes are small
		return status.Newf(codes.Internal, "grpc-status-details-bin mismatch: grpc-status=%v, grpc-message=%q, grpc-status-details-bin=%+v", code, message, sp)
	}
	return status.FromProto(sp)
}

// nonGRPCStatus is grpc-go's status for an answer that is not gRPC.
func nonGRPCStatus(httpStatus, contentType string) *status.Status {
	code := codes.Internal
	var errs []string
	if httpStatus == "" {
		errs = append(errs, "malformed header: missing HTTP status")
	} else {
		n, err := strconv.Atoi(httpStatus)
		if err != nil {
			return status.Newf(codes.Internal, "transport: malformed http-status: %v", err)
		}
		errs = append(errs, fmt.Sprintf("unexpected HTTP status code received from server: %d (%s)", n, http.StatusText(n)))
		switch n {
		case http.StatusBadRequest:
			code = codes.Internal
		case http.StatusUnauthorized:
			code = codes.Unauthenticated
		case http.StatusForbidden:
			code = codes.PermissionDenied
		case http.StatusNotFound:
			code = codes.Unimplemented
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			code = codes.Unavailable
		default:
			code = codes.Unknown
		}
	}
	if contentType == "" {
		errs = append(errs, "malformed header: missing HTTP content-type")
	} else {
		errs = append(errs, fmt.Sprintf("transport: received unexpected content-type %q", contentType))
	}
	return status.New(code, strings.Join(errs, "; "))
}

// rstError is grpc-go's error for a stream the upstream reset.
func rstError(code http2.ErrCode) error {
	c := connect.CodeInternal
	switch code {
	case http2.ErrCodeFlowControl, http2.ErrCodeEnhanceYourCalm:
		c = connect.CodeResourceExhausted
	case http2.ErrCodeRefusedStream:
		c = connect.CodeUnavailable
	case http2.ErrCodeCancel:
		c = connect.CodeCanceled
	case http2.ErrCodeInadequateSecurity:
		c = connect.CodePermissionDenied
	}
	return connect.NewError(c, fmt.Errorf("stream terminated by RST_STREAM with error code: %v", code))
}

// contextError is the error of a call whose context ended.
func contextError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(connect.CodeCanceled, err)
}

// validGRPCContentType is grpc-go's test of a response's content type.
func validGRPCContentType(ct string) bool {
	if !strings.HasPrefix(ct, "application/grpc") {
		return false
	}
	rest := ct[len("application/grpc"):]
	return rest == "" || rest[0] == '+' || rest[0] == ';'
}

// isReservedGRPCHeader reports the header names grpc-go keeps out of
// metadata: the pseudo-headers and those the gRPC protocol itself uses.
func isReservedGRPCHeader(name string) bool {
	if name != "" && name[0] == ':' {
		return true
	}
	switch name {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding",
		"grpc-message", "grpc-status", "grpc-timeout", "te":
		return true
	}
	return false
}

// decodeGRPCMessage undoes grpc-message's percent-encoding as grpc-go does.
func decodeGRPCMessage(msg string) string {
	if !strings.Contains(msg, "%") {
		return msg
	}
	var sb strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c == '%' && i+2 < len(msg) {
			if parsed, err := strconv.ParseUint(msg[i+1:i+3], 16, 8); err == nil {
				sb.WriteByte(byte(parsed))
				i += 2
				continue
			}
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// encodeGRPCTimeout is grpc-timeout for t, in the smallest unit whose
// value fits the protocol's eight digits, rounded up, as grpc-go writes it.
func encodeGRPCTimeout(t time.Duration) string {
	if t <= 0 {
		return "0n"
	}
	const maxValue = 1e8 - 1
	for _, u := range [...]struct {
		d    time.Duration
		unit string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if v := (t + u.d - 1) / u.d; v <= maxValue {
			return strconv.FormatInt(int64(v), 10) + u.unit
		}
	}
	return strconv.FormatInt(int64((t+time.Hour-1)/time.Hour), 10) + "H"
}
