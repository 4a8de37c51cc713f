package sse

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

const (
	envelopeHeaderLen   = 5
	flagCompressed      = 0b01
	flagEndStream       = 0b10
	maxEnvelopeLen      = 4 << 20 // a generated workflow is far smaller
	maxErrorBody        = 8 << 10
	keepBufferCap       = 4 << 10
	writeGrace          = 30 * time.Second
	connectStreamPrefix = "application/connect+"
)

var (
	errStreamFinished = errors.New("sse: stream already finished")
	errEnvelopeTooBig = errors.New("sse: upstream message too large")
	errCompressed     = errors.New("sse: upstream sent a compressed message it was not asked for")
	jsonOptions       = protojson.MarshalOptions{UseProtoNames: true}
)

// stream is the http.ResponseWriter the RPC handler writes its Connect
// stream into. It decodes envelopes as they arrive and writes one SSE event
// per message to the browser. The RPC handler writes from the request's
// goroutine; heartbeats come from a timer; mu orders the two.
type stream struct {
	b      *Bridge
	out    http.ResponseWriter
	rc     *http.ResponseController
	header http.Header
	status int
	isRPC  bool // the response is a Connect stream (vs. a middleware error)

	pending []byte // an envelope split across writes
	errBody []byte // body of a non-stream response, bounded
	events  uint64
	end     *apiError // the upstream's end-of-stream error
	sawEnd  bool

	mu         sync.Mutex
	committed  bool // the browser has a 200 text/event-stream
	finished   bool
	outErr     error // writing to the browser failed
	lastWrite  time.Time
	beating    bool // a heartbeat write is under way
	noDeadline bool // the writer does not support deadlines
}

func newStream(b *Bridge, w http.ResponseWriter) *stream {
	s := &stream{b: b, out: w, rc: http.NewResponseController(w), header: make(http.Header, 2), lastWrite: time.Now()}
	// A server-wide write timeout would cut a long stream: replace it by
	// a rolling deadline that every write (heartbeats included) renews.
	s.renewDeadline()
	if b.beats != nil {
		b.beats.add(s)
	}
	return s
}

// Header is the RPC response's header, never the browser's.
func (s *stream) Header() http.Header { return s.header }

func (s *stream) WriteHeader(code int) {
	if s.status != 0 {
		return
	}
	s.status = code
	s.isRPC = code == http.StatusOK && strings.HasPrefix(s.header.Get("Content-Type"), connectStreamPrefix)
}

// Flush is a no-op: every event is flushed as it is written.
func (s *stream) Flush() {}

func (s *stream) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.WriteHeader(http.StatusOK)
	}
	if !s.isRPC {
		if room := maxErrorBody - len(s.errBody); room > 0 {
			s.errBody = append(s.errBody, p[:min(room, len(p))]...)
		}
		return len(p), nil
	}
	if s.sawEnd {
		return 0, errStreamFinished
	}
	if len(s.pending) == 0 {
		rest, err := s.consume(p)
		if err != nil {
			return 0, err
		}
		if len(rest) > 0 {
			s.pending = append(s.pending[:0], rest...)
		}
		return len(p), nil
	}
	s.pending = append(s.pending, p...)
	rest, err := s.consume(s.pending)
	if err != nil {
		return 0, err
	}
	s.pending = s.pending[:copy(s.pending, rest)]
	if len(s.pending) == 0 {
		// Idle streams hold no buffer while they wait for the next message.
		s.pending = nil
	}
	return len(p), nil
}

// consume handles every complete envelope in data and returns what is left.
func (s *stream) consume(data []byte) ([]byte, error) {
	for len(data) >= envelopeHeaderLen {
		size := binary.BigEndian.Uint32(data[1:envelopeHeaderLen])
		if size > maxEnvelopeLen {
			s.fail(brokenStream())
			return nil, errEnvelopeTooBig
		}
		total := envelopeHeaderLen + int(size)
		if len(data) < total {
			break
		}
		flags, payload := data[0], data[envelopeHeaderLen:total]
		data = data[total:]
		if flags&flagCompressed != 0 {
			s.fail(brokenStream())
			return nil, errCompressed
		}
		if flags&flagEndStream != 0 {
			s.endStream(payload)
			return nil, nil
		}
		if err := s.message(payload); err != nil {
			return nil, err
		}
	}
	return data, nil
}

func (s *stream) fail(e *apiError) {
	if s.end == nil {
		s.end = e
	}
	s.sawEnd = true
}

func (s *stream) endStream(payload []byte) {
	s.sawEnd = true
	var msg struct {
		Error    *wireError  `json:"error"`
		Metadata http.Header `json:"metadata"`
	}
	if err := json.Unmarshal(payload, &msg); err != nil {
		s.end = brokenStream()
		return
	}
	if msg.Error != nil {
		s.end = fromWireError(msg.Error, msg.Metadata)
	}
}

func (s *stream) message(payload []byte) error {
	msg := s.b.respType.New()
	if err := proto.Unmarshal(payload, msg.Interface()); err != nil {
		s.b.logger.Error("sse: undecodable upstream message", "procedure", s.b.procedure, "error", err)
		s.fail(brokenStream())
		return err
	}
	data, err := jsonOptions.Marshal(msg.Interface())
	if err != nil {
		s.b.logger.Error("sse: could not encode upstream message", "procedure", s.b.procedure, "error", err)
		s.fail(brokenStream())
		return err
	}
	s.events++
	return s.writeEvent("", s.eventID(msg), data)
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
