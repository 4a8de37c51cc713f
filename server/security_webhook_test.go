package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/genproto/googleapis/api/httpbody"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/backends/runtimesvc"
	"github.com/flowgate/flowgate/backends/store/storetest"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/runtime/v1/runtimev1connect"
)

// keyReusedStatus is what REST callers get for an Idempotency-Key sent
// again with another request, as payment APIs answer.
const keyReusedStatus, keyReusedCode = http.StatusUnprocessableEntity, "IDEMPOTENCY_KEY_REUSED"

const hookSecret = "hostile-table-webhook-secret"

// hookFixture is a gateway over the reference backends where tenant A has
// a signed webhook ("signed/hook") and an unsigned one ("plain/hook").
type hookFixture struct {
	url               string
	tokA, tokB        string
	signed, plain     string // A's webhook URLs
	signedID, plainID string
}

func newHookFixture(t *testing.T, databaseURL string) *hookFixture {
	t.Helper()
	sec, _ := secConfig(t)
	cfg := Config{MaxTimeout: 30 * time.Second, Security: sec}
	cfg.Agent, cfg.Runtime, cfg.Engine = startBackends(t, backends.Config{DatabaseURL: databaseURL})
	_, url := startGateway(t, cfg)
	f := &hookFixture{
		url:  url,
		tokA: hsToken(t, jwt.MapClaims{"sub": "ann", "tenant": "hook-a"}),
		tokB: hsToken(t, jwt.MapClaims{"sub": "bob", "tenant": "hook-b"}),
	}
	f.signedID, f.signed = f.deploy(t, f.tokA, `{"type":"webhook","path":"signed/hook","secret":"`+hookSecret+`"}`)
	f.plainID, f.plain = f.deploy(t, f.tokA, `{"type":"webhook","path":"plain/hook"}`)
	return f
}

// deploy creates a deployment with one trigger and returns its id and
// webhook URL.
func (f *hookFixture) deploy(t *testing.T, tok, trigger string) (id, hookURL string) {
	t.Helper()
	res := f.create(t, tok, trigger)
	var dep struct {
		ID  string `json:"deployment_id"`
		URL string `json:"webhook_url"`
	}
	if res.status != http.StatusOK || json.Unmarshal(res.body, &dep) != nil || dep.ID == "" {
		t.Fatalf("deploy %s: %d %s", trigger, res.status, res.body)
	}
	return dep.ID, strings.Replace(dep.URL, "http://gateway.test", f.url, 1)
}

func (f *hookFixture) create(t *testing.T, tok, trigger string) restResult {
	body := `{"name":"hook","workflow_definition":{"name":"hook","nodes":[{"id":"start","type":"trigger"},` +
		`{"id":"done","type":"respond","parameters":{"body":"ok"}}],"connections":[{"source":"start","target":"done"}]},` +
		`"triggers":[` + trigger + `]}`
	return doREST(t, http.MethodPost, f.url+"/api/v1/workflow/deployments", strings.NewReader(body), bearer(tok))
}

// withSignature returns a copy of h, signed for body at signedAt unless
// that is zero.
func withSignature(h http.Header, body string, signedAt time.Time) http.Header {
	h = h.Clone()
	if h == nil {
		h = http.Header{}
	}
	if !signedAt.IsZero() {
		h.Set("X-Flowgate-Timestamp", strconv.FormatInt(signedAt.Unix(), 10))
		h.Set("X-Flowgate-Signature", runtimesvc.Sign(hookSecret, signedAt.Unix(), []byte(body)))
	}
	return h
}

func post(t *testing.T, url, body string, signedAt time.Time, h http.Header) restResult {
	t.Helper()
	return doREST(t, http.MethodPost, url, strings.NewReader(body), withSignature(h, body, signedAt))
}

// sentTwice sends a request, which must be accepted, then the same again
// as changed by again (when not nil), and returns the second answer.
func sentTwice(t *testing.T, url, body string, signedAt time.Time, h http.Header, again func(http.Header) (string, http.Header)) restResult {
	t.Helper()
	if first := post(t, url, body, signedAt, h); first.status != http.StatusAccepted {
		t.Fatalf("first request: %d %s", first.status, first.body)
	}
	body2, h2 := body, withSignature(h, body, signedAt)
	if again != nil {
		body2, h2 = again(h2)
	}
	return doREST(t, http.MethodPost, url, strings.NewReader(body2), h2)
}

// hookAttack is one hostile webhook request, with the answer it must get.
type hookAttack struct {
	name   string
	send   func(t *testing.T, f *hookFixture) restResult
	status int
	code   string
	msg    string // in the error's message
	reason string // details.reason, when set
}

var hookAttacks = []hookAttack{
	{
		name: "replayed signature", status: http.StatusUnauthorized, code: "UNAUTHORIZED", msg: "already been used",
		send: func(t *testing.T, f *hookFixture) restResult {
			return sentTwice(t, f.signed, `{"case":1}`, time.Now(), nil, nil)
		},
	},
	{
		name: "replayed signature in upper-case hex, with a new Idempotency-Key", status: http.StatusUnauthorized, code: "UNAUTHORIZED", msg: "already been used",
		send: func(t *testing.T, f *hookFixture) restResult {
			return sentTwice(t, f.signed, `{"case":2}`, time.Now(), http.Header{"Idempotency-Key": {"k-2"}}, func(h http.Header) (string, http.Header) {
				h.Set("X-Flowgate-Signature", "sha256="+strings.ToUpper(strings.TrimPrefix(h.Get("X-Flowgate-Signature"), "sha256=")))
				h.Set("Idempotency-Key", "k-2-other")
				return `{"case":2}`, h
			})
		},
	},
	{
		name: "Idempotency-Key reused with another body", status: keyReusedStatus, code: keyReusedCode, msg: "Idempotency-Key", reason: "IDEMPOTENCY_KEY_REUSED",
		send: func(t *testing.T, f *hookFixture) restResult {
			return sentTwice(t, f.plain, `{"amount":1}`, time.Time{}, http.Header{"Idempotency-Key": {"k-3"}}, func(h http.Header) (string, http.Header) {
				return `{"amount":1000}`, h
			})
		},
	},
	{
		name: "Idempotency-Key reused with another query", status: keyReusedStatus, code: keyReusedCode, msg: "Idempotency-Key", reason: "IDEMPOTENCY_KEY_REUSED",
		send: func(t *testing.T, f *hookFixture) restResult {
			first := post(t, f.plain+"?refund=no", `{"amount":4}`, time.Time{}, http.Header{"Idempotency-Key": {"k-4"}})
			if first.status != http.StatusAccepted {
				t.Fatalf("first request: %d %s", first.status, first.body)
			}
			return post(t, f.plain+"?refund=yes", `{"amount":4}`, time.Time{}, http.Header{"Idempotency-Key": {"k-4"}})
		},
	},
	{
		name: "path without its tenant's namespace", status: http.StatusNotFound, code: "NOT_FOUND", msg: "not found",
		send: func(t *testing.T, f *hookFixture) restResult {
			return post(t, f.url+"/api/v1/webhooks/plain/hook", `{}`, time.Time{}, nil)
		},
	},
	{
		name: "guessed namespace", status: http.StatusNotFound, code: "NOT_FOUND", msg: "not found",
		send: func(t *testing.T, f *hookFixture) restResult {
			return post(t, f.url+"/api/v1/webhooks/"+strings.Repeat("0", 32)+"/plain/hook", `{}`, time.Time{}, nil)
		},
	},
	{
		name: "deployment path with a dot segment", status: http.StatusBadRequest, code: "VALIDATION_ERROR", msg: "'.' or '..'",
		send: func(t *testing.T, f *hookFixture) restResult {
			return f.create(t, f.tokB, `{"type":"webhook","path":"x/../signed/hook"}`)
		},
	},
}

// dotPaths are webhook URLs with dot segments, plain and percent-encoded.
func dotPaths(f *hookFixture) []string {
	ns := strings.TrimSuffix(strings.TrimPrefix(f.plain, f.url+"/api/v1/webhooks/"), "/plain/hook")
	base := f.url + "/api/v1/webhooks/"
	return []string{
		base + ns + "/x/../plain/hook",
		base + ns + "/./plain/hook",
		base + "../" + ns + "/plain/hook",
		base + ns + "/x/%2e%2e/plain/hook",
		base + ns + "/%2E/plain/hook",
		base + ns + "/x/.%2e/plain/hook",
		base + ns + "%2Fx%2F..%2Fplain/hook",
	}
}

// TestHostileWebhooks sends each webhook attack through the gateway to the
// reference runtime, on SQLite and on PostgreSQL, checks the exact error,
// and that only the accepted requests ran.
func TestHostileWebhooks(t *testing.T) {
	t.Parallel()
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) {
			t.Parallel()
			databaseURL := ""
			if db == "postgres" {
				databaseURL, _ = storetest.PostgresSchema(t)
			}
			f := newHookFixture(t, databaseURL)
			t.Run("attacks", func(t *testing.T) {
				for _, tc := range hookAttacks {
					t.Run(tc.name, func(t *testing.T) {
						t.Parallel()
						checkRefusal(t, tc.send(t, f), tc.status, tc.code, tc.msg, tc.reason)
					})
				}
				for _, p := range secProtocols {
					t.Run(p.name, func(t *testing.T) {
						t.Parallel()
						hookAttacksOverRPC(t, f, p.name, p.http1, p.opts)
					})
				}
				for _, u := range dotPaths(f) {
					t.Run("dot segments "+strings.TrimPrefix(u, f.url), func(t *testing.T) {
						t.Parallel()
						checkRefusal(t, post(t, u, `{}`, time.Time{}, nil), http.StatusBadRequest, "VALIDATION_ERROR", "'.' or '..'", "")
					})
				}
			})
			// Only the first copy of each request ran: two over REST, one
			// over each RPC protocol.
			for id, want := range map[string]int{f.signedID: 2 + len(secProtocols), f.plainID: 2 + len(secProtocols)} {
				if got := countRuns(t, f, id); got != want {
					t.Errorf("deployment %s ran %d times, want %d", id, got, want)
				}
			}
			checkPathsPerTenant(t, f)
		})
	}
}

// hookAttacksOverRPC sends the attacks as TriggerWebhook calls over one
// RPC protocol, which must get the codes REST callers' statuses stand for.
func hookAttacksOverRPC(t *testing.T, f *hookFixture, name string, http1 bool, opts []connect.ClientOption) {
	client := h2cClient(t)
	if http1 {
		client = http1Client(t)
	}
	rt := runtimev1connect.NewWorkflowRuntimeServiceClient(client, f.url, opts...)
	call := func(path, body string, h map[string]string) error {
		_, err := rt.TriggerWebhook(t.Context(), connect.NewRequest(&runtimev1.TriggerWebhookRequest{
			Path: path, Body: &httpbody.HttpBody{ContentType: "application/json", Data: []byte(body)}, Headers: h,
		}))
		return err
	}
	signedPath := strings.TrimPrefix(f.signed, f.url+"/api/v1/webhooks/")
	plainPath := strings.TrimPrefix(f.plain, f.url+"/api/v1/webhooks/")
	body := fmt.Sprintf(`{"protocol":%q}`, name)
	now := time.Now().Unix()
	signed := map[string]string{"x-flowgate-timestamp": strconv.FormatInt(now, 10), "x-flowgate-signature": runtimesvc.Sign(hookSecret, now, []byte(body))}
	key := map[string]string{"idempotency-key": "rpc-" + name}
	for _, first := range []error{call(signedPath, body, signed), call(plainPath, body, key)} {
		if first != nil {
			t.Fatalf("first request: %v", first)
		}
	}
	ns, _, _ := strings.Cut(plainPath, "/")
	for what, c := range map[string]struct {
		err  error
		code connect.Code
	}{
		"replayed signature":     {call(signedPath, body, signed), connect.CodeUnauthenticated},
		"idempotency key reused": {call(plainPath, body+" ", key), connect.CodeFailedPrecondition},
		"no namespace":           {call("plain/hook", body, nil), connect.CodeNotFound},
		"dot segments":           {call(ns+"/x/../plain/hook", body, nil), connect.CodeInvalidArgument},
	} {
		if connect.CodeOf(c.err) != c.code {
			t.Errorf("%s: %v, want %v", what, c.err, c.code)
		}
	}
}

func checkRefusal(t *testing.T, res restResult, status int, code, msg, reason string) {
	t.Helper()
	var e struct {
		Error struct {
			Message string         `json:"message"`
			Details map[string]any `json:"details"`
		} `json:"error"`
	}
	_ = json.Unmarshal(res.body, &e)
	if res.status != status || res.code != code || !strings.Contains(e.Error.Message, msg) {
		t.Errorf("%d %s %q, want %d %s with %q", res.status, res.code, e.Error.Message, status, code, msg)
	}
	if reason != "" && e.Error.Details["reason"] != reason {
		t.Errorf("details %v, want reason %s", e.Error.Details, reason)
	}
}

func countRuns(t *testing.T, f *hookFixture, deploymentID string) int {
	t.Helper()
	res := doREST(t, http.MethodGet, f.url+"/api/v1/executions?deployment_id="+deploymentID, nil, bearer(f.tokA))
	var list struct {
		Total int `json:"total_count"`
	}
	if res.status != http.StatusOK || json.Unmarshal(res.body, &list) != nil {
		t.Fatalf("list executions: %d %s", res.status, res.body)
	}
	return list.Total
}

// checkPathsPerTenant: tenant B takes the same paths as A without a
// conflict, learns nothing of A's, and each URL runs its own tenant's
// deployment; within a tenant a path is still unique.
func checkPathsPerTenant(t *testing.T, f *hookFixture) {
	t.Helper()
	idB, urlB := f.deploy(t, f.tokB, `{"type":"webhook","path":"plain/hook"}`)
	if urlB == f.plain || !strings.HasSuffix(urlB, "/plain/hook") {
		t.Fatalf("B's webhook URL %q, A's %q", urlB, f.plain)
	}
	before := countRuns(t, f, f.plainID)
	if res := post(t, urlB, `{"tenant":"b"}`, time.Time{}, nil); res.status != http.StatusAccepted {
		t.Fatalf("B's webhook: %d %s", res.status, res.body)
	}
	if countRuns(t, f, f.plainID) != before {
		t.Error("B's webhook ran A's deployment")
	}
	res := doREST(t, http.MethodGet, f.url+"/api/v1/executions?deployment_id="+idB, nil, bearer(f.tokB))
	if !strings.Contains(string(res.body), `"total_count":1`) {
		t.Errorf("B's executions: %s", res.body)
	}
	res = f.create(t, f.tokA, `{"type":"webhook","path":"plain/hook"}`)
	checkRefusal(t, res, http.StatusConflict, "CONFLICT", `"plain/hook"`, "")
	if strings.Contains(fmt.Sprint(res.header), "hook-b") || strings.Contains(string(res.body), "hook-b") {
		t.Errorf("the conflict names another tenant: %s", res.body)
	}
}
