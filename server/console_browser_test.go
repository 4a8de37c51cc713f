package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/runtimesvc"
	"github.com/flowgate/flowgate/interceptors"
)

// consoleMessage is understood by the agent's offline planner: a webhook
// workflow that answers its caller, with no outside calls.
const consoleMessage = "When a webhook receives an order over 100, respond with 'big order', otherwise respond with 'small order'"

const (
	consoleKey    = "console-test-api-key-0123456789"
	consoleSecret = "console-webhook-secret-0123"
)

// TestBrowserConsole drives the web console in Chromium as a user would,
// on a gateway without authentication and on one that asks for
// credentials: sign in (with an API key, later with a token), chat, watch the generation complete, deploy it with a new
// name and a webhook secret, fire the webhook, pause and resume it, and
// read the execution's node results. Each page is photographed and its
// text at that moment checked. FLOWGATE_CONSOLE_SCREENSHOTS names a
// directory to keep the screenshots in.
func TestBrowserConsole(t *testing.T) {
	t.Parallel()
	requireChromium(t)
	for _, auth := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "api-key"}[auth]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			base := consoleGateway(t, auth)
			c := &consoleRun{t: t, ctx: browser(t), base: base, name: name}
			c.watchErrors()
			c.run(auth)
			if p := c.errors(); len(p) > 0 {
				t.Errorf("the page reported errors (script exceptions, CSP violations):\n%s", strings.Join(p, "\n"))
			}
		})
	}
}

func consoleGateway(t *testing.T, auth bool) string {
	t.Helper()
	ls, err := backends.LoopbackListeners()
	if err != nil {
		t.Fatal(err)
	}
	b, err := backends.Start(context.Background(), backends.Config{
		DataDir: t.TempDir(), PublicURL: "http://gateway.test", AuthKey: []byte(testBackendKey),
	}, ls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Shutdown(context.Background()) })
	a, r, e := b.Addrs()
	cfg := Config{Agent: Upstream{Address: a}, Runtime: Upstream{Address: r}, Engine: Upstream{Address: e}}
	if auth {
		cfg.Security.APIKeys = interceptors.HashAPIKey(consoleKey) +
			":console-user:acme:agent:chat workflows:read workflows:write workflows:execute"
		cfg.Security.SecretKey = secTestSecret
	}
	_, base := startGateway(t, cfg)
	return base
}

type consoleRun struct {
	t    *testing.T
	ctx  context.Context //nolint:containedctx // the browser tab's lifetime
	base string
	name string

	mu       sync.Mutex
	problems []string
}

// watchErrors records uncaught exceptions and the browser's own error
// reports (a CSP violation among them). Refused calls are logged by the
// browser as network errors, and the sign-in step makes some on purpose.
func (c *consoleRun) watchErrors() {
	err := chromedp.Listen(c.ctx, func(ev any) {
		var problem string
		switch ev := ev.(type) {
		case *cdpruntime.EventExceptionThrown:
			problem = fmt.Sprintf("exception: %s %v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception)
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError && ev.Entry.Source != cdplog.EntrySourceNetwork {
				problem = fmt.Sprintf("%s: %s", ev.Entry.Source, ev.Entry.Text)
			}
		}
		if problem != "" {
			c.mu.Lock()
			c.problems = append(c.problems, problem)
			c.mu.Unlock()
		}
	})
	if err != nil {
		c.t.Fatal(err)
	}
}

func (c *consoleRun) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.problems)
}

func (c *consoleRun) run(auth bool) {
	c.do(chromedp.EmulateViewport(1280, 900))
	c.do(chromedp.Navigate(c.base + "/"))
	if auth {
		c.waitFor(`document.querySelector("form.signin") !== null`, "the sign-in page")
		c.shot("signin", "Sign in", "This gateway requires credentials")
		c.do(chromedp.SendKeys(`input[name="credential"]`, "wrong-key"))
		c.do(chromedp.Click(`form.signin button[type="submit"]`))
		c.waitText(`form.signin .error`, "your credentials were not accepted. (invalid API key)")
		c.do(chromedp.SetValue(`input[name="credential"]`, consoleKey))
		c.do(chromedp.Click(`form.signin button[type="submit"]`))
		c.waitFor(`document.querySelector("#who button") !== null`, "signed in")
	} else {
		c.waitText(`#who`, "Authentication is off")
	}

	if !auth {
		// Older deployments, so that the list has two pages (the
		// generated one, newest, leads the first).
		for i := range 10 {
			c.deploy(fmt.Sprintf(`{"name":"Filler %d","triggers":[{"type":"manual"}],"workflow_definition":{"nodes":[{"id":"t","type":"trigger"}]}}`, i))
		}
	}

	// Chat, and watch the generation it starts until it is deployed.
	c.waitFor(`document.querySelector("form.chat-form") !== null`, "the chat page")
	c.do(chromedp.SendKeys(`textarea[name="message"]`, consoleMessage))
	c.do(chromedp.Click(`form.chat-form button[type="submit"]`))
	c.waitText(`#generation-status`, "Generation complete")
	c.waitText(`.conversation .turn.assistant`, "deploying it now")
	c.waitFor(`document.querySelector("form.editor") !== null`, "the deployment editor")
	c.shot("chat", "Here is the plan", "Generation complete", "complete", "draft 1", "dry run succeeded",
		"Receive orders", "Check amount", "Webhook:", "/api/v1/webhooks/", "Copy", "Deploy")
	depID := c.text(`.deployed a code`)

	// Deploy it under a new name, with a secret its senders must sign with.
	c.do(chromedp.SetValue(`form.editor input[name="name"]`, "Console orders"))
	c.do(chromedp.SetValue(`form.editor input[name="secret"]`, consoleSecret))
	c.do(chromedp.Click(`form.editor button[type="submit"]`))
	c.waitText(`form.editor .form-message`, "Deployed: Console orders is active")
	webhook := c.text(`.deployed .webhook-url`)
	execID := c.fireWebhook(webhook)

	c.do(chromedp.Click(`header nav a[href="#/deployments"]`))
	row := fmt.Sprintf(`tr[data-deployment=%q]`, depID)
	c.waitText(row, "Console orders")
	pages := map[bool]string{false: "Page 1 of 2 · 11 in all", true: "Page 1 of 1 · 1 in all"}[auth]
	c.shot("deployments", "Deployments", "Console orders", "active", webhook, "Copy", "Pause", pages)
	if !auth {
		c.do(chromedp.Click(`.pager a[rel="next"]`))
		c.waitText(`.pager`, "Page 2 of 2")
		c.waitText(`table.deployments`, "Filler 0")
		c.do(chromedp.Click(`.pager a[rel="prev"]`))
		c.waitText(`.pager`, "Page 1 of 2")
	}
	c.do(chromedp.Click(row + ` button.toggle`))
	c.waitText(row, "paused")
	c.waitText(row+` button.toggle`, "Resume")
	c.do(chromedp.Click(row + ` button.toggle`))
	c.waitText(row+` button.toggle`, "Pause")
	c.waitText(row, "active")

	c.waitFor(`(location.hash = "#/executions?deployment_id=`+depID+`") !== ""`, "the executions page")
	execRow := fmt.Sprintf(`tr[data-execution=%q]`, execID)
	c.waitText(execRow, "succeeded")
	c.shot("executions", "Executions", execID, "succeeded", "webhook", "Page 1 of 1")
	c.do(chromedp.SetValue(`select[name="status"]`, "failed"))
	c.do(chromedp.Click(`form.filters button[type="submit"]`))
	c.waitText(`.panel`, "No executions match.")
	c.do(chromedp.SetValue(`select[name="status"]`, "succeeded"))
	c.do(chromedp.Click(`form.filters button[type="submit"]`))
	c.waitText(execRow, "succeeded")

	c.do(chromedp.Click(execRow + ` a`))
	c.waitText(`#execution-status`, "succeeded")
	c.waitFor(`document.querySelectorAll("table.nodes tr[data-node]").length === 4`, "four node results")
	c.shot("execution", "Execution "+execID, "Node results", "trigger", "check", "respond", "otherwise_respond",
		"skipped", "big order", "Took")
	for node, status := range map[string]string{"trigger": "succeeded", "check": "succeeded", "respond": "succeeded", "otherwise_respond": "skipped"} {
		if got := c.text(fmt.Sprintf(`table.nodes tr[data-node=%q] .badge`, node)); got != status {
			c.t.Errorf("node %s shows %q, want %q", node, got, status)
		}
		if got := c.attr(fmt.Sprintf(`svg.graph g.node[data-node=%q]`, node), "class"); !strings.Contains(got, "status-"+status) {
			c.t.Errorf("graph node %s has class %q, want status-%s", node, got, status)
		}
	}
	if !auth {
		c.watchRunning()
		return
	}
	// Sign out, and in again with a bearer token of the same tenant.
	c.do(chromedp.Click(`#who button`))
	c.waitFor(`document.querySelector("form.signin") !== null`, "the sign-in page after signing out")
	c.do(chromedp.SetValue(`select[name="kind"]`, "token"))
	c.do(chromedp.SendKeys(`input[name="credential"]`, hsToken(c.t, nil)))
	c.do(chromedp.Click(`form.signin button[type="submit"]`))
	c.waitFor(`document.querySelector("#who button") !== null`, "signed in with a token")
	c.do(chromedp.Click(`header nav a[href="#/deployments"]`))
	c.waitText(row, "Console orders")
	c.do(chromedp.Click(`header nav a[href="#/chat"]`))
	c.waitText(`#generation-status`, "Nothing generated yet.")
	if n := c.text(`.chat-log`); n != "" {
		c.t.Errorf("the conversation outlived signing out: %q", n)
	}
}

// watchRunning opens an execution while it runs and sees it finish
// without a reload.
func (c *consoleRun) watchRunning() {
	c.t.Helper()
	c.deploy(`{"name":"Slow","triggers":[{"type":"webhook","path":"slow"}],"workflow_definition":{"nodes":[` +
		`{"id":"t","type":"trigger"},{"id":"wait","type":"delay","parameters":{"duration":"1500ms"}}],` +
		`"connections":[{"source":"t","target":"wait"}]}}`)
	var list struct {
		Deployments []struct {
			WebhookURL string `json:"webhook_url"`
		}
	}
	c.rest(http.MethodGet, "/api/v1/workflow/deployments?page_size=1", "", &list)
	_, path, _ := strings.Cut(list.Deployments[0].WebhookURL, "/api/v1/webhooks/")
	var started struct {
		ExecutionID string `json:"execution_id"`
	}
	c.rest(http.MethodPost, "/api/v1/webhooks/"+path, `{}`, &started)
	c.waitFor(`(location.hash = "#/executions/`+started.ExecutionID+`") !== ""`, "the running execution's page")
	c.waitText(`#execution-status`, "running")
	c.waitText(`#execution-status`, "succeeded")
	c.waitText(`table.nodes tr[data-node="wait"]`, "succeeded")
}

func (c *consoleRun) deploy(body string) {
	c.t.Helper()
	c.rest(http.MethodPost, "/api/v1/workflow/deployments", body, nil)
}

// rest calls the gateway's REST surface (the plain gateway's: no
// credentials) and decodes the answer into out.
func (c *consoleRun) rest(method, path, body string, out any) {
	c.t.Helper()
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http1Client(c.t).Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer res.Body.Close()
	got, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		c.t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, got)
	}
	if out != nil {
		if err := json.Unmarshal(got, out); err != nil {
			c.t.Fatalf("%s %s: %v in %s", method, path, err, got)
		}
	}
}

// fireWebhook sends a big order to the deployment's webhook, first
// unsigned (refused: the deployment now has a secret), then signed, and
// returns the execution it started.
func (c *consoleRun) fireWebhook(webhookURL string) string {
	c.t.Helper()
	_, path, ok := strings.Cut(webhookURL, "/api/v1/webhooks/")
	if !ok {
		c.t.Fatalf("webhook URL %q", webhookURL)
	}
	body := []byte(`{"order_id":"C-1","amount":250}`)
	post := func(signed bool) *http.Response {
		req, err := http.NewRequestWithContext(c.t.Context(), http.MethodPost, c.base+"/api/v1/webhooks/"+path, bytes.NewReader(body))
		if err != nil {
			c.t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if signed {
			ts := time.Now().Unix()
			req.Header.Set("X-Flowgate-Timestamp", strconv.FormatInt(ts, 10))
			req.Header.Set("X-Flowgate-Signature", runtimesvc.Sign(consoleSecret, ts, body))
		}
		res, err := http1Client(c.t).Do(req)
		if err != nil {
			c.t.Fatal(err)
		}
		return res
	}
	res := post(false)
	_ = res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		c.t.Fatalf("unsigned webhook: %d, want 401 (the secret set in the console is not in force)", res.StatusCode)
	}
	res = post(true)
	defer res.Body.Close()
	got, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK || !strings.Contains(string(got), "big order") {
		c.t.Fatalf("signed webhook: %d %s", res.StatusCode, got)
	}
	id := res.Header.Get("X-Flowgate-Execution-Id")
	if id == "" {
		c.t.Fatal("no X-Flowgate-Execution-Id")
	}
	return id
}

func (c *consoleRun) do(a chromedp.Action[chromedp.Void]) {
	c.t.Helper()
	if _, err := chromedp.Run(c.ctx, a); err != nil {
		c.t.Fatalf("%v; the page says: %s", err, c.pageText())
	}
}

func (c *consoleRun) pageText() string {
	text, _ := chromedp.Run(c.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	return text
}

func (c *consoleRun) text(sel string) string {
	c.t.Helper()
	v, err := chromedp.Run(c.ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? "").trim()`, sel)))
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

func (c *consoleRun) attr(sel, name string) string {
	c.t.Helper()
	v, err := chromedp.Run(c.ctx, chromedp.Evaluate[string](fmt.Sprintf(`document.querySelector(%q)?.getAttribute(%q) ?? ""`, sel, name)))
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

// waitFor polls a condition in the page until it holds.
func (c *consoleRun) waitFor(cond, what string) {
	c.t.Helper()
	for {
		ok, err := chromedp.Run(c.ctx, chromedp.Evaluate[bool](`!!(`+cond+`)`))
		if err != nil {
			c.t.Fatalf("waiting for %s: %v; the page says: %s", what, err, c.pageText())
		}
		if ok {
			return
		}
		select {
		case <-c.ctx.Done():
			c.t.Fatalf("timed out waiting for %s; the page says: %s", what, c.pageText())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *consoleRun) waitText(sel, want string) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? "").includes(%s)`, sel, jsString(want)), fmt.Sprintf("%q in %s", want, sel))
}

// shot photographs the page and checks the text it showed then.
func (c *consoleRun) shot(page string, want ...string) {
	c.t.Helper()
	png, err := chromedp.Run(c.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		c.t.Fatal(err)
	}
	text := c.pageText()
	dir := os.Getenv("FLOWGATE_CONSOLE_SCREENSHOTS")
	if dir == "" {
		dir = c.t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("console-%s-%s.png", c.name, page)), png, 0o644); err != nil {
		c.t.Fatal(err)
	}
	if len(png) < 1000 {
		c.t.Errorf("%s: a %d-byte screenshot", page, len(png))
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			c.t.Errorf("%s page: %q not shown; it says:\n%s", page, w, text)
		}
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
