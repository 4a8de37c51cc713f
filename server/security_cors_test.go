package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// corsScript calls the gateway from the page's origin: REST with a
// preflighted POST and DELETE, the Connect protocol with JSON, and an
// unauthenticated call whose 401 must be readable. It resolves to a JSON
// list of outcomes; a CORS refusal surfaces as a TypeError.
const corsScript = `
async function corsProbe(gw, token) {
  const auth = {"Authorization": "Bearer " + token};
  const probes = [
    ["rest-post", gw + "/api/v1/workflow/execute", {method: "POST",
      headers: {...auth, "Content-Type": "application/json"},
      body: JSON.stringify({workflow_definition: {name: "cors-rest"}})}],
    ["rest-delete", gw + "/api/v1/workflow/deployments/d1", {method: "DELETE", headers: auth}],
    ["connect", gw + "/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", {method: "POST",
      headers: {...auth, "Content-Type": "application/json", "Connect-Protocol-Version": "1"},
      body: JSON.stringify({workflowDefinition: {name: "cors-connect"}})}],
    ["unauthenticated", gw + "/api/v1/workflow/execute", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: "{}"}],
  ];
  const out = [];
  for (const [name, url, init] of probes) {
    try {
      const res = await fetch(url, {...init, mode: "cors"});
      const text = await res.text();
      out.push({name, ok: true, status: res.status, requestId: res.headers.get("X-Request-Id") || "", body: text.slice(0, 300)});
    } catch (e) {
      out.push({name, ok: false, error: String(e)});
    }
  }
  return JSON.stringify(out);
}`

type corsOutcome struct {
	Name      string `json:"name"`
	OK        bool   `json:"ok"`
	Status    int    `json:"status"`
	RequestID string `json:"requestId"`
	Body      string `json:"body"`
	Error     string `json:"error"`
}

// servePage serves an empty page with the probe script on its own origin.
func servePage(tb testing.TB) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!doctype html><html><head><script>%s</script></head><body>probe</body></html>", corsScript)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// headlessChromium starts a browser for the test, or skips when none is
// installed and the run is not in CI (where its absence is a failure).
func headlessChromium(tb testing.TB) context.Context {
	tb.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "" {
			tb.Skip("chromium is not installed (apt-get install -y chromium)")
		}
		tb.Fatal("chromium is required in CI")
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(tb.TempDir()),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	tb.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

func probeFrom(tb testing.TB, ctx context.Context, page, gw, tok string) []corsOutcome {
	tb.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Navigate(page)); err != nil {
		tb.Fatalf("browser: %v", err)
	}
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf("corsProbe(%q, %q)", gw, tok), chromedp.EvalAwaitPromise))
	if err != nil {
		tb.Fatalf("browser: %v", err)
	}
	var out []corsOutcome
	if err := json.Unmarshal([]byte(raw), &out); err != nil {
		tb.Fatalf("probe result %q: %v", raw, err)
	}
	return out
}

// TestCORSFromHeadlessChromium loads a page from an allowed origin and one
// from another origin, each calling the gateway on a third port with fetch
// over REST (preflighted POST and DELETE) and the Connect protocol.
func TestCORSFromHeadlessChromium(t *testing.T) {
	t.Parallel()
	ctx := headlessChromium(t)
	allowed, foreign := servePage(t), servePage(t)
	f := newSecFixture(t, func(c *Config) {
		c.Security.AllowedOrigins = []string{allowed.URL, "http://localhost:3000"}
	})
	tok := hsToken(t, nil)

	got := probeFrom(t, ctx, allowed.URL, f.url, tok)
	want := map[string]int{"rest-post": 200, "rest-delete": 501, "connect": 200, "unauthenticated": 401}
	for _, o := range got {
		if !o.OK {
			t.Errorf("allowed origin, %s: refused by the browser: %s", o.Name, o.Error)
			continue
		}
		if o.Status != want[o.Name] {
			t.Errorf("allowed origin, %s: status %d, want %d (%s)", o.Name, o.Status, want[o.Name], o.Body)
		}
		if o.RequestID == "" {
			t.Errorf("allowed origin, %s: exposed X-Request-Id not readable", o.Name)
		}
	}
	if len(got) != len(want) {
		t.Errorf("probes = %d", len(got))
	}
	if len(f.rec.find("cors-rest")) != 1 || len(f.rec.find("cors-connect")) != 1 {
		t.Error("allowed calls did not reach the backend once each")
	}

	before := len(f.rec.all())
	for _, o := range probeFrom(t, ctx, foreign.URL, f.url, tok) {
		if o.OK {
			t.Errorf("foreign origin, %s: the browser let the page read the response (status %d)", o.Name, o.Status)
		} else if !strings.Contains(o.Error, "TypeError") {
			t.Errorf("foreign origin, %s: unexpected failure %s", o.Name, o.Error)
		}
	}
	// Preflighted calls never leave the preflight.
	if after := len(f.rec.all()); after != before {
		t.Errorf("the backend saw %d calls from the foreign origin", after-before)
	}
}

// TestCORSPreflightHeaders checks the preflight answers directly: the
// verbs and headers each protocol needs, credentials only for listed
// origins, and nothing for others.
func TestCORSPreflightHeaders(t *testing.T) {
	t.Parallel()
	f := newSecFixture(t, nil)
	preflight := func(origin, method, headers string) http.Header {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodOptions, f.url+"/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", method)
		req.Header.Set("Access-Control-Request-Headers", headers)
		res, err := http1Client(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode >= 300 {
			t.Errorf("preflight status %d", res.StatusCode)
		}
		return res.Header
	}
	// Browsers send the requested headers lowercased and sorted.
	h := preflight("http://localhost:3000", "POST", "authorization,connect-protocol-version,content-type,x-api-key,x-grpc-web")
	if h.Get("Access-Control-Allow-Origin") != "http://localhost:3000" || h.Get("Access-Control-Allow-Credentials") != "true" {
		t.Errorf("allowed origin preflight: %v", h)
	}
	for _, m := range []string{"PUT", "DELETE", "PATCH"} {
		if preflight("http://localhost:8080", m, "authorization").Get("Access-Control-Allow-Methods") != m {
			t.Errorf("REST verb %s not allowed", m)
		}
	}
	if h := preflight("https://evil.test", "POST", "authorization"); h.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("foreign origin got CORS headers: %v", h)
	}

	wild, err := newSecurity(SecurityConfig{AllowedOrigins: []string{"*"}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodOptions, "/api/v1/health", nil)
	req.Header.Set("Origin", "https://anywhere.test")
	req.Header.Set("Access-Control-Request-Method", "GET")
	wild.wrapHTTP(http.NotFoundHandler()).ServeHTTP(rec, req)
	if rec.Header().Get("Access-Control-Allow-Origin") != "*" || rec.Header().Get("Access-Control-Allow-Credentials") != "" {
		t.Errorf("wildcard origin: %v", rec.Header())
	}
}
