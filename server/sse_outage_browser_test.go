package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/flowgate/flowgate/backends"
)

// outageProxy is a TCP proxy in front of an upstream that the test can
// take down, as an upstream restart would: while it is down its port
// refuses connections and the connections it had are cut.
type outageProxy struct {
	tb     testing.TB
	addr   string
	target string
	up     *cutter // nil while down
}

func newOutageProxy(tb testing.TB, target string) *outageProxy {
	tb.Helper()
	p := &outageProxy{tb: tb, target: target}
	p.up = newCutter(tb, target)
	p.addr = p.up.ln.Addr().String()
	return p
}

// setDown takes the upstream down or brings it back on the same port.
func (p *outageProxy) setDown(down bool) {
	switch {
	case down && p.up != nil:
		_ = p.up.ln.Close()
		p.up.cut()
		p.up = nil
	case !down && p.up == nil:
		p.up = listenCutter(p.tb, p.addr, p.target)
	}
}

// A browser whose EventSource opens while the agent is down keeps
// reconnecting, told each time that the outage is retryable, and gets the
// stream's events once the agent is back.
func TestBrowserEventSourceOutlivesUpstreamOutage(t *testing.T) {
	t.Parallel()
	requireChromium(t)
	page := httptest.NewServer(http.FileServer(http.Dir("testdata")))
	t.Cleanup(page.Close)
	agentUp, runtimeUp, engineUp := startBackends(t, backends.Config{})
	proxy := newOutageProxy(t, agentUp.Address)
	_, base := startGateway(t, Config{
		Agent: Upstream{Address: proxy.addr}, Runtime: runtimeUp, Engine: engineUp,
		SSE:      SSEConfig{Heartbeat: time.Second, Retry: 200 * time.Millisecond},
		Security: SecurityConfig{AllowedOrigins: []string{page.URL}},
	})
	sid := createSession(t, base)
	proxy.setDown(true)

	ctx := browser(t)
	pageURL := page.URL + "/sse_page.html?" + url.Values{"gw": {base}, "sid": {sid}, "streams": {"gen"}}.Encode()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatal(err)
	}
	// On a 502 EventSource would give up after the first attempt; each
	// outage answer must bring another.
	waitCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	outage := waitLog(t, waitCtx, func(log []logEntry) bool { return len(outageEvents(log)) >= 3 })
	for _, e := range outageEvents(outage) {
		if e["code"] != "BAD_GATEWAY" || e["message"] != "workflow agent is unavailable" {
			t.Errorf("outage event %v, want BAD_GATEWAY workflow agent is unavailable", e)
		}
	}

	proxy.setDown(false)
	chatURL := base + "/api/v1/chat/stream?" + url.Values{"session_id": {sid}, "user_message": {orderMessage}}.Encode()
	if chat := readSSE(t, sseGet(t, http1Client(t), chatURL, nil).Body, nil); len(chat) == 0 || chat[len(chat)-1].name != "end" {
		t.Fatalf("chat after the outage: %+v", chat)
	}
	log := waitLog(t, waitCtx, func(log []logEntry) bool {
		for _, e := range only(log, "gen") {
			if e.Kind == "end" {
				return true
			}
		}
		return false
	})
	var kinds []string
	for _, e := range only(log, "gen") {
		if e.Kind == "message" {
			kinds = append(kinds, e.Data["type"].(string))
		}
	}
	if got := strings.Join(kinds, " "); !strings.HasPrefix(got, "waiting start") || !strings.HasSuffix(got, "complete") {
		raw, _ := json.Marshal(only(log, "gen"))
		t.Errorf("generation events after the outage %q; the page saw: %s", got, raw)
	}
}

// outageEvents are the error objects of the error events the page saw.
func outageEvents(log []logEntry) []map[string]any {
	var out []map[string]any
	for _, e := range only(log, "gen") {
		if e.Kind == "error-event" {
			body, _ := e.Data["error"].(map[string]any)
			out = append(out, body)
		}
	}
	return out
}
