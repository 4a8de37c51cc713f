package server

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
)

// The connection splitter hands each cleartext connection whose first
// request is gRPC to the gateway's grpc-go server, and every other
// connection (HTTP/1.1, HTTP/2 carrying REST, Connect or gRPC-Web) to
// net/http. gRPC callers keep a connection for gRPC alone, and grpc-go
// serves it at a fraction of what net/http's HTTP/2 server costs per call.
//
// The protocol is known only from the first request's headers, which a
// gRPC client may send after waiting for the server's SETTINGS. The
// splitter therefore answers the connection preface with an empty SETTINGS
// frame of its own, reads frames up to the first HEADERS, and replays them
// to the chosen server, dropping the client's acknowledgement of that
// extra SETTINGS frame, which the chosen server never sent.

const (
	h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
	// maxSniffBytes bounds what is read of a connection to classify it.
	maxSniffBytes = 64 << 10

	frameHeaders      = 0x1
	frameSettings     = 0x4
	frameContinuation = 0x9
	flagAck           = 0x1
	flagEndHeaders    = 0x4
	flagPadded        = 0x8
	flagPriority      = 0x20

	settingMaxConcurrentStreams = 0x3
	settingMaxHeaderListSize    = 0x6
)

// settingsFrame is the splitter's SETTINGS frame. It states the limits
// both servers state, so that a client is held to them from its first
// request; the chosen server then sends its own.
func settingsFrame(maxStreams, maxHeaderList uint32) []byte {
	f := []byte{0, 0, 12, frameSettings, 0, 0, 0, 0, 0}
	f = binary.BigEndian.AppendUint16(f, settingMaxConcurrentStreams)
	f = binary.BigEndian.AppendUint32(f, maxStreams)
	f = binary.BigEndian.AppendUint16(f, settingMaxHeaderListSize)
	return binary.BigEndian.AppendUint32(f, maxHeaderList)
}

// connSplitter accepts connections from ln and routes them.
type connSplitter struct {
	ln       net.Listener
	settings []byte
	http     *chanListener
	// grpc gets the connections whose first request is gRPC; nil sends
	// them to http.
	grpc *chanListener
	// h1 serves HTTP/1.x connections until it hands them to http; nil
	// sends them to http at once.
	h1      *h1Fast
	timeout time.Duration
	wg      sync.WaitGroup
}

func newConnSplitter(ln net.Listener, timeout time.Duration, settings []byte) *connSplitter {
	return &connSplitter{ln: ln, settings: settings, http: newChanListener(ln.Addr()), timeout: timeout}
}

// run accepts until the listener closes, then closes the outputs.
func (s *connSplitter) run() {
	defer func() {
		s.wg.Wait()
		s.http.Close()
		if s.grpc != nil {
			s.grpc.Close()
		}
	}()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return
		}
		s.wg.Add(1)
		go s.route(conn)
	}
}

// route classifies one connection and hands it over. The splitter's wait
// ends once it has; the HTTP/1.1 loop tracks its connections itself.
func (s *connSplitter) route(conn net.Conn) {
	_ = conn.SetReadDeadline(time.Now().Add(s.timeout))
	prefix, h2, grpc, dropAck, err := sniff(conn, s.settings, s.grpc != nil)
	_ = conn.SetReadDeadline(time.Time{})
	if err != nil && len(prefix) == 0 {
		s.wg.Done()
		_ = conn.Close()
		return
	}
	if !h2 && err == nil && s.h1 != nil {
		s.wg.Done()
		s.h1.serve(conn, prefix)
		return
	}
	defer s.wg.Done()
	wrapped := &replayConn{Conn: conn, prefix: prefix, dropAck: dropAck, h1: !h2}
	if grpc && err == nil {
		s.grpc.deliver(wrapped)
		return
	}
	s.http.deliver(wrapped)
}

// sniff reads the start of a connection. It returns what it read, to be
// replayed; whether the connection starts with the HTTP/2 preface, and
// whether its first request is gRPC (looked for only when frames is
// set); and whether the client's acknowledgement of the splitter's
// SETTINGS is still to come.
func sniff(conn net.Conn, settings []byte, frames bool) (prefix []byte, h2, grpc, dropAck bool, err error) {
	var buf bytes.Buffer
	// Read only as far as the bytes agree with the preface: an HTTP/1.x
	// request (shorter than the preface, even) is handed over at once.
	head := make([]byte, len(h2Preface))
	for got := 0; got < len(head); {
		n, err := conn.Read(head[got:])
		buf.Write(head[got : got+n])
		got += n
		if string(head[:got]) != h2Preface[:got] || err != nil {
			return buf.Bytes(), false, false, false, err
		}
	}
	if !frames {
		return buf.Bytes(), true, false, false, nil
	}
	if _, err := conn.Write(settings); err != nil {
		return buf.Bytes(), true, false, false, err
	}
	dropAck = true
	var block []byte
	for buf.Len() < maxSniffBytes {
		hdr, payload, err := readFrame(conn, maxSniffBytes)
		if err != nil {
			return buf.Bytes(), true, false, dropAck, err
		}
		typ, flags := hdr[3], hdr[4]
		if dropAck && typ == frameSettings && flags&flagAck != 0 {
			dropAck = false
			continue
		}
		buf.Write(hdr)
		buf.Write(payload)
		switch typ {
		case frameHeaders:
			block = append(block, headerFragment(flags, payload)...)
		case frameContinuation:
			block = append(block, payload...)
		default:
			continue
		}
		if flags&flagEndHeaders != 0 {
			return buf.Bytes(), true, isGRPCHeaderBlock(block), dropAck, nil
		}
	}
	return buf.Bytes(), true, false, dropAck, nil
}

// readFrame reads one HTTP/2 frame of at most limit payload bytes.
func readFrame(r io.Reader, limit int) (hdr, payload []byte, err error) {
	hdr = make([]byte, 9)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, nil, err
	}
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	if length > limit {
		return nil, nil, errors.New("frame too large to classify")
	}
	payload = make([]byte, length)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, nil, err
	}
	return hdr, payload, nil
}

// headerFragment is the header block fragment of a HEADERS frame's payload,
// without padding and priority fields.
func headerFragment(flags byte, p []byte) []byte {
	pad := 0
	if flags&flagPadded != 0 && len(p) > 0 {
		pad = int(p[0])
		p = p[1:]
	}
	if flags&flagPriority != 0 && len(p) >= 5 {
		p = p[5:]
	}
	if pad > len(p) {
		return nil
	}
	return p[:len(p)-pad]
}

// isGRPCHeaderBlock reports whether the first request is gRPC (not
// gRPC-Web) with uncompressed messages. Callers that compress are left to
// net/http, whose decompression the gateway bounds. The first header block
// of a connection is decoded with an empty dynamic table, as the client
// encoded it.
func isGRPCHeaderBlock(block []byte) bool {
	fields, err := hpack.NewDecoder(4096, nil).DecodeFull(block)
	if err != nil {
		return false
	}
	grpc := false
	for _, f := range fields {
		switch f.Name {
		case "content-type":
			ct := strings.ToLower(f.Value)
			grpc = ct == "application/grpc" || strings.HasPrefix(ct, "application/grpc+proto") || strings.HasPrefix(ct, "application/grpc;")
		case "grpc-encoding":
			if f.Value != "identity" {
				return false
			}
		case "grpc-timeout":
			if !validGRPCTimeout(f.Value) {
				return false
			}
		default:
			if strings.HasSuffix(f.Name, "-bin") && !validBinaryHeader(f.Value) {
				return false
			}
		}
	}
	return grpc
}

// validGRPCTimeout and validBinaryHeader check what grpc-go would refuse
// with a bare HTTP 400: a caller making that mistake on its first request
// gets net/http's path, which answers in the gRPC error shape.
func validGRPCTimeout(v string) bool {
	if len(v) < 2 || len(v) > 9 || !strings.ContainsRune("HMSmun", rune(v[len(v)-1])) {
		return false
	}
	for _, c := range v[:len(v)-1] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func validBinaryHeader(v string) bool {
	for _, part := range strings.Split(v, ",") {
		part = strings.TrimSpace(part)
		if len(part)%4 == 0 {
			if _, err := base64.StdEncoding.DecodeString(part); err == nil {
				continue
			}
		}
		if _, err := base64.RawStdEncoding.DecodeString(part); err != nil {
			return false
		}
	}
	return true
}

// replayConn gives its reader the bytes sniffing consumed, then the
// connection's, leaving out the client's acknowledgement of the splitter's
// SETTINGS frame if it had not arrived yet. On a connection net/http
// serves over HTTP/1.x (h1), net/http's own plain-text answers are
// written in the contract's shape (see contractAnswer).
type replayConn struct {
	net.Conn
	prefix  []byte
	dropAck bool
	frame   []byte // a frame read while looking for the acknowledgement
	h1      bool
}

func (c *replayConn) Write(p []byte) (int, error) {
	if c.h1 {
		if answer, ok := contractAnswer(p); ok {
			if _, err := c.Conn.Write(answer); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	for len(c.frame) == 0 && c.dropAck {
		hdr, payload, err := readFrame(c.Conn, 1<<24)
		if err != nil {
			return 0, err
		}
		if hdr[3] == frameSettings && hdr[4]&flagAck != 0 {
			c.dropAck = false
			continue
		}
		c.frame = append(hdr, payload...)
	}
	if len(c.frame) > 0 {
		n := copy(p, c.frame)
		c.frame = c.frame[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// chanListener is a net.Listener fed connections by the splitter.
type chanListener struct {
	addr   net.Addr
	conns  chan net.Conn
	done   chan struct{}
	closer sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.closer.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
