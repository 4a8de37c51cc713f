package sse

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	keepBufferCap = 4 << 10
	writeGrace    = 30 * time.Second
)

var (
	errStreamFinished = errors.New("sse: stream already finished")
	jsonOptions       = protojson.MarshalOptions{UseProtoNames: true}
)

// Protocol is the protocol a stream's handler sees in [connect.Peer].
const Protocol = "sse"

// stream is one open stream: the connection its handler serves
// ([connect.StreamingHandlerConn]) and the browser's response, one event per
// message sent. The handler sends from its goroutine; heartbeats come from
// the bridge's ticker; mu orders the two.
type stream struct {
	b        *Bridge
	out      http.ResponseWriter
	rc       *http.ResponseController
	peer     connect.Peer
	header   http.Header // the call's request headers
	request  []byte      // the request message until the handler takes it
	received bool
	resumed  bool // the browser reconnected with Last-Event-ID
	// The handler's response headers and trailers are never sent (they
	// describe the call, not the SSE exchange); they are made on demand
	// and dropped once the first message is out, when headers can no
	// longer change anything.
	resHeader  http.Header
	resTrailer http.Header
	events     uint64
	broken     *apiError // a message could not become an event

	mu         sync.Mutex
	committed  bool // the browser has a 200 text/event-stream
	finished   bool
	outErr     error // writing to the browser failed
	lastWrite  time.Time
	beating    bool // a heartbeat write is under way
	noDeadline bool // the writer does not support deadlines
}

// call is what a stream's handler is given of the browser's request.
type call struct {
	request []byte // the request message, encoded
	header  http.Header
	peer    connect.Peer
	resumed bool
}

func newStream(b *Bridge, w http.ResponseWriter, c call) *stream {
	s := &stream{
		b: b, out: w, rc: http.NewResponseController(w),
		peer: c.peer, header: c.header, request: c.request, resumed: c.resumed, lastWrite: time.Now(),
	}
	// A server-wide write timeout would cut a long stream: replace it by
	// a rolling deadline that every write (heartbeats included) renews.
	s.renewDeadline()
	if b.beats != nil {
		b.beats.add(s)
	}
	return s
}

func (s *stream) Spec() connect.Spec         { return s.b.spec }
func (s *stream) Peer() connect.Peer         { return s.peer }
func (s *stream) RequestHeader() http.Header { return s.header }

// Receive hands the handler the request message built from the query
// string, then io.EOF: a server stream has exactly one request message.
//
// A resumed stream is committed here: by the time the handler takes its
// request, the interceptors in front of it (authentication, rate limits)
// have let the call through, and a browser that resumes often has nothing
// new to hear for a long while; until it has the headers, EventSource
// stays "connecting" and proxies may time the request out.
func (s *stream) Receive(m any) error {
	if s.received {
		return io.EOF
	}
	s.received = true
	data := s.request
	s.request = nil
	if err := s.b.unmarshal(data, m); err != nil {
		return err
	}
	if s.resumed {
		s.commit()
	}
	return nil
}

func (b *Bridge) unmarshal(data []byte, m any) error {
	if b.codec != nil {
		return b.codec.Unmarshal(data, m)
	}
	pm, ok := m.(proto.Message)
	if !ok {
		return connect.NewError(connect.CodeInternal, fmt.Errorf("sse: cannot receive a request into %T", m))
	}
	return proto.Unmarshal(data, pm)
}

func (s *stream) ResponseHeader() http.Header {
	if s.resHeader == nil {
		s.resHeader = make(http.Header)
	}
	return s.resHeader
}

func (s *stream) ResponseTrailer() http.Header {
	if s.resTrailer == nil {
		s.resTrailer = make(http.Header)
	}
	return s.resTrailer
}

// Send writes m to the browser as one event.
func (s *stream) Send(m any) error {
	s.resHeader = nil
	msg, err := s.b.decode(m)
	if err != nil {
		s.b.logger.Error("sse: undecodable message", "procedure", s.b.procedure, "error", err)
		s.broken = brokenStream()
		return connect.NewError(connect.CodeInternal, err)
	}
	data, err := jsonOptions.Marshal(msg.Interface())
	if err != nil {
		s.b.logger.Error("sse: could not encode message", "procedure", s.b.procedure, "error", err)
		s.broken = brokenStream()
		return connect.NewError(connect.CodeInternal, err)
	}
	s.events++
	return s.writeEvent("", s.eventID(msg), data)
}

// decode returns the protobuf view of a message the handler sent.
func (b *Bridge) decode(m any) (protoreflect.Message, error) {
	if b.codec == nil {
		pm, ok := m.(proto.Message)
		if !ok {
			return nil, fmt.Errorf("%T is not a proto.Message", m)
		}
		return pm.ProtoReflect(), nil
	}
	data, err := b.codec.Marshal(m)
	if err != nil {
		return nil, err
	}
	msg := b.respType.New()
	if err := proto.Unmarshal(data, msg.Interface()); err != nil {
		return nil, err
	}
	return msg, nil
}

func (s *stream) eventID(msg protoreflect.Message) string {
	if s.b.eventID == nil {
		return strconv.FormatUint(s.events, 10)
	}
	v := msg.Get(s.b.eventID)
	if s.b.eventID.Kind() == protoreflect.StringKind {
		return v.String()
	}
	if !msg.Has(s.b.eventID) {
		return ""
	}
	return v.String()
}

// writeEvent writes one event; data must be a single line of JSON.
func (s *stream) writeEvent(name, id string, data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeEventLocked(name, id, data)
}

// writeError ends the stream with an error event. A retryable one always
// carries retry advice, so that browsers come back at a measured pace even
// where the bridge advises no delay of its own, and no sooner than the
// failure's Retry-After.
func (s *stream) writeError(failure *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if failure.retryable && s.outErr == nil && !s.finished {
		s.commitLocked()
		advised := DefaultRetry // what outageRetry says
		if s.b.retryField != nil {
			advised = s.b.retry // sent as the stream began
		}
		switch d := failure.retryAdvice(); {
		case d > advised:
			_ = s.writeLocked(retryField(d)) // the last retry field counts
		case s.b.retryField == nil:
			_ = s.writeLocked(s.b.outageRetry)
		}
	}
	_ = s.writeEventLocked("error", "", failure.body())
}

func (s *stream) writeEventLocked(name, id string, data []byte) error {
	if s.outErr != nil {
		return s.outErr
	}
	if s.finished {
		return errStreamFinished
	}
	s.commitLocked()
	bp := eventBuffers.Get().(*[]byte)
	buf := (*bp)[:0]
	if name != "" {
		buf = append(append(append(buf, "event: "...), name...), '\n')
	}
	if id != "" && !strings.ContainsAny(id, "\r\n\x00") {
		buf = append(append(append(buf, "id: "...), id...), '\n')
	}
	buf = append(append(append(buf, "data: "...), data...), "\n\n"...)
	err := s.writeLocked(buf)
	if cap(buf) <= keepBufferCap {
		*bp = buf[:0]
		eventBuffers.Put(bp)
	}
	return err
}

// eventBuffers are shared by all streams, so that a stream waiting for its
// next message holds no buffer.
var eventBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// commit sends the stream's headers now, with no event yet.
func (s *stream) commit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.outErr != nil {
		return
	}
	s.commitLocked()
}

// commitLocked sends the stream's headers once: from then on, failures
// are reported in the stream.
func (s *stream) commitLocked() {
	if s.committed {
		return
	}
	s.committed = true
	h := s.out.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	// no-transform and X-Accel-Buffering stop proxies (nginx included) from
	// buffering or compressing the stream.
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	h.Del("Content-Encoding")
	s.out.WriteHeader(http.StatusOK)
	if s.b.retryField != nil {
		_ = s.writeLocked(s.b.retryField)
	}
}

func (s *stream) writeLocked(p []byte) error {
	if s.outErr != nil {
		return s.outErr
	}
	s.setDeadline(time.Now().Add(writeGrace))
	if _, err := s.out.Write(p); err != nil {
		s.outErr = err
		return err
	}
	if err := s.rc.Flush(); err != nil {
		s.outErr = err
		return err
	}
	s.lastWrite = time.Now()
	s.renewDeadline()
	return nil
}

// renewDeadline lets the connection sit idle until the next heartbeat is
// due, plus grace; without heartbeats there is no idle deadline at all.
func (s *stream) renewDeadline() {
	if s.b.heartbeat > 0 {
		s.setDeadline(time.Now().Add(s.b.heartbeat + writeGrace))
	} else {
		s.setDeadline(time.Time{})
	}
}

func (s *stream) setDeadline(t time.Time) {
	if s.noDeadline {
		return
	}
	if err := s.rc.SetWriteDeadline(t); errors.Is(err, http.ErrNotSupported) {
		s.noDeadline = true
	}
}

// quietSince reports whether the stream has written nothing for a whole
// interval before now, and claims the heartbeat if so.
func (s *stream) quietSince(now time.Time, interval time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished || s.outErr != nil || s.beating || now.Sub(s.lastWrite) < interval {
		return false
	}
	s.beating = true
	return true
}

// beat writes a comment line to a quiet stream.
func (s *stream) beat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beating = false
	if s.finished || s.outErr != nil {
		return
	}
	s.commitLocked()
	_ = s.writeLocked(heartbeatLine)
}

var (
	heartbeatLine = []byte(": heartbeat\n\n")
	endData       = []byte("{}")
)
