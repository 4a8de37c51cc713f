package interceptors

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"testing"
	"time"
)

// hostile are strings a caller can put in a logged field (a request id, a
// path, an error message) that JSON must escape exactly as slog does.
var hostile = []string{
	"",
	"plain/ascii.Path-1_2~",
	`"quoted" \back\slash\ /slash`,
	"\x00\x01\x07\x08\x0b\x0c\x1b\x1f\x7f",
	"tab\there\nnewline\rreturn",
	"<script>&amp;</script>",
	"\u2028line\u2029para\u2027\u202a",
	"é日本語🙂",
	"\xff",
	"bad\xc3(utf8\xe2\x82tail\xf0\x9f\x98",
	"\xed\xa0\x80 surrogate half",
	"\xc0\xaf overlong",
	"\xf4\x90\x80\x80 beyond U+10FFFF",
	"mix\u0000\"\\\u2028\xfe\U0001F600end",
	string(bytes.Repeat([]byte("x\x1f"), 300)),
}

// slogLine is the oracle: the line slog's own JSON handler writes for a
// record.
func slogLine(t *testing.T, when time.Time, level slog.Level, msg string, attrs ...slog.Attr) string {
	t.Helper()
	var buf bytes.Buffer
	r := slog.NewRecord(when, level, msg, 0)
	r.AddAttrs(attrs...)
	if err := slog.NewJSONHandler(&buf, nil).Handle(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

func TestAccessLineMatchesSlog(t *testing.T) {
	t.Parallel()
	times := []time.Time{
		time.Date(2026, 12, 1, 14, 30, 0, 0, time.UTC),
		time.Date(2026, 12, 1, 14, 30, 0, 123456789, time.UTC),
		time.Date(2026, 12, 1, 14, 30, 0, 120000000, time.FixedZone("", 5*3600+30*60)),
		time.Date(1999, 1, 2, 3, 4, 5, 1, time.FixedZone("", -8*3600)),
		time.Now(), // with a monotonic reading, which slog drops
	}
	durations := []time.Duration{0, 1, 1500 * time.Microsecond, -time.Second, math.MaxInt64, math.MinInt64}
	levels := []slog.Level{slog.LevelInfo, slog.LevelWarn, slog.LevelError, slog.LevelDebug, slog.LevelInfo + 1}
	n := 0
	for i, s := range hostile {
		when := times[i%len(times)]
		d := durations[i%len(durations)]
		level := levels[i%len(levels)]
		other := hostile[(i+1)%len(hostile)]
		for _, hasErr := range []bool{false, true} {
			attrs := []slog.Attr{
				slog.String("procedure", s), slog.String("protocol", other), slog.String("code", "ok"),
				slog.Duration("duration", d), slog.String("request_id", s), slog.String("peer", other),
			}
			if hasErr {
				attrs = append(attrs, slog.String("error", s))
			}
			want := slogLine(t, when, level, "rpc", attrs...)
			got := string(appendRPCLine(nil, when, level, s, other, "ok", d, s, other, hasErr, s))
			if got != want {
				t.Errorf("rpc line for %q:\n got %s\nwant %s", s, got, want)
			}
			n++
		}
		status := []int{200, 404, 503, 0, -1, math.MaxInt}[i%6]
		want := slogLine(t, when, level, "http",
			slog.String("method", other), slog.String("path", s), slog.String("protocol", s),
			slog.Int("status", status), slog.Duration("duration", d),
			slog.String("request_id", other), slog.String("peer", s))
		got := string(appendHTTPLine(nil, when, level, other, s, s, status, d, other, s))
		if got != want {
			t.Errorf("http line for %q:\n got %s\nwant %s", s, got, want)
		}
		n++
	}
	// Every single byte, in a field of its own.
	for c := range 256 {
		s := string([]byte{'a', byte(c), 'z'})
		want := slogLine(t, times[0], slog.LevelInfo, "rpc", slog.String("procedure", s), slog.String("protocol", ""),
			slog.String("code", "ok"), slog.Duration("duration", 0), slog.String("request_id", ""), slog.String("peer", ""))
		if got := string(appendRPCLine(nil, times[0], slog.LevelInfo, s, "", "ok", 0, "", "", false, "")); got != want {
			t.Errorf("byte %#x:\n got %s\nwant %s", c, got, want)
		}
	}
	if n == 0 {
		t.Fatal("no cases")
	}
}

func FuzzAccessLineMatchesSlog(f *testing.F) {
	for _, s := range hostile {
		f.Add(s, int64(len(s)))
	}
	when := time.Date(2026, 12, 1, 14, 30, 0, 123456789, time.UTC)
	f.Fuzz(func(t *testing.T, s string, d int64) {
		want := slogLine(t, when, slog.LevelWarn, "rpc", slog.String("procedure", s), slog.String("protocol", s),
			slog.String("code", s), slog.Duration("duration", time.Duration(d)), slog.String("request_id", s),
			slog.String("peer", s), slog.String("error", s))
		if got := string(appendRPCLine(nil, when, slog.LevelWarn, s, s, s, time.Duration(d), s, s, true, s)); got != want {
			t.Errorf("got %s\nwant %s", got, want)
		}
	})
}

// TestDirectJSONOnlyForPlainHandler: the access log encodes its lines
// itself on NewJSONHandler's logger, and leaves them to slog wherever that
// would change the line. The line tests pass either way, so this is what
// notices the direct path silently going unused.
func TestDirectJSONOnlyForPlainHandler(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	direct := slog.New(NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if NewAccessLog(direct).json == nil || NewAccessLog(slog.New(NewJSONHandler(&buf, nil))).json == nil {
		t.Error("NewJSONHandler's logger is not encoded directly")
	}
	for name, logger := range map[string]*slog.Logger{
		"slog":          slog.New(slog.NewJSONHandler(&buf, nil)),
		"with":          direct.With(slog.String("service", "gw")),
		"group":         direct.WithGroup("g"),
		"replace":       slog.New(NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr { return a }})),
		"source":        slog.New(NewJSONHandler(&buf, &slog.HandlerOptions{AddSource: true})),
		"nil (discard)": nil,
	} {
		if NewAccessLog(logger).json != nil {
			t.Errorf("%s: encoded directly", name)
		}
	}
}
