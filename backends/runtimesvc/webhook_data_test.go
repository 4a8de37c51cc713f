package runtimesvc

import (
	"bytes"
	"encoding/json"
	"mime/multipart"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/api/httpbody"

	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

func triggerDataJSON(t *testing.T, msg *runtimev1.TriggerWebhookRequest) string {
	t.Helper()
	data, err := webhookTriggerData("hooks/in", msg)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(data.AsMap())
	return string(out)
}

func TestWebhookTriggerData(t *testing.T) {
	t.Parallel()
	var mp bytes.Buffer
	w := multipart.NewWriter(&mp)
	_ = w.WriteField("name", "Ada")
	_ = w.WriteField("tag", "a")
	_ = w.WriteField("tag", "b")
	fw, _ := w.CreateFormFile("doc", "note.txt")
	_, _ = fw.Write([]byte("hello"))
	_ = w.Close()
	for _, tc := range []struct {
		name string
		msg  *runtimev1.TriggerWebhookRequest
		want string
	}{
		{
			name: "GET with repeated query values",
			msg: &runtimev1.TriggerWebhookRequest{Method: "GET", RawQuery: "challenge=abc&id=1&id=2",
				Query: map[string]string{"challenge": "abc", "id": "1"}, Headers: map[string]string{"user-agent": "Verifier/1.0", headerSignature: "sha256=00"}},
			want: `{"body":null,"content_type":"","headers":{"user-agent":"Verifier/1.0"},"method":"GET","path":"hooks/in",` +
				`"query":{"challenge":"abc","id":"1"},"query_values":{"challenge":["abc"],"id":["1","2"]},"user_agent":"Verifier/1.0"}`,
		},
		{
			name: "urlencoded form",
			msg: &runtimev1.TriggerWebhookRequest{Body: &httpbody.HttpBody{ContentType: "application/x-www-form-urlencoded", Data: []byte("name=Ada+L&tag=a&tag=b")},
				Query: map[string]string{"x": "1"}},
			want: `{"body":{"name":"Ada L","tag":["a","b"]},"content_type":"application/x-www-form-urlencoded",` +
				`"headers":{"content-type":"application/x-www-form-urlencoded"},"method":"POST","path":"hooks/in","query":{"x":"1"},"query_values":{"x":["1"]},"user_agent":""}`,
		},
		{
			name: "multipart form",
			msg:  &runtimev1.TriggerWebhookRequest{Method: "post", Body: &httpbody.HttpBody{ContentType: w.FormDataContentType(), Data: mp.Bytes()}},
			want: `{"body":{"doc":{"content":"hello","content_type":"application/octet-stream","filename":"note.txt","size":5},"name":"Ada","tag":["a","b"]},` +
				`"content_type":"` + w.FormDataContentType() + `","headers":{"content-type":"` + w.FormDataContentType() + `"},"method":"POST","path":"hooks/in","query":{},"query_values":{},"user_agent":""}`,
		},
	} {
		if got := triggerDataJSON(t, tc.msg); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
	// Broken forms are the sender's mistake.
	for _, body := range []*httpbody.HttpBody{
		{ContentType: "multipart/form-data", Data: []byte("x")},
		{ContentType: "multipart/form-data; boundary=zz", Data: []byte("--zz\r\nbroken")},
		{ContentType: "application/x-www-form-urlencoded", Data: []byte("a=%zz")},
	} {
		if _, err := webhookTriggerData("p", &runtimev1.TriggerWebhookRequest{Body: body}); err == nil {
			t.Errorf("%s %q accepted", body.GetContentType(), body.GetData())
		} else {
			wantCode(t, body.GetContentType(), err, connect.CodeInvalidArgument, "body")
		}
	}
}

func TestWebhookVerificationHandshake(t *testing.T) {
	t.Parallel()
	runOverBackends(t, map[string]storeTest{"GET echoes the challenge": testGetHandshake})
}

func testGetHandshake(t *testing.T, db *store.DB, eng enginev1connect.WorkflowEngineServiceClient) {
	s := newService(t, db, eng, nil)
	wf := &enginev1.WorkflowDefinition{Name: "verify", Nodes: []*enginev1.Node{
		node("start", "trigger", nil),
		node("is_get", "condition", map[string]any{"expression": `trigger.method == "GET"`}),
		node("echo", "respond", map[string]any{"body": "{{ trigger.query.challenge }}"}),
		node("ok", "respond", map[string]any{"status_code": 202, "body": map[string]any{"ids": "{{ trigger.query_values.id }}", "agent": "{{ trigger.user_agent }}"}}),
	}, Connections: []*enginev1.Connection{
		{Source: "start", Target: "is_get"}, {Source: "is_get", Target: "echo", Branch: "true"}, {Source: "is_get", Target: "ok", Branch: "false"},
	}}
	res, err := s.CreateDeployment(t.Context(), req("acme", &runtimev1.CreateDeploymentRequest{
		Name: "verify", WorkflowDefinition: wf, Triggers: []*runtimev1.Trigger{{Type: "webhook", Path: "verify", ResponseMode: "wait"}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	path := hookPath(t, res.Msg.GetDeployment())
	get, err := s.TriggerWebhook(t.Context(), connect.NewRequest(&runtimev1.TriggerWebhookRequest{Path: path, Method: "GET", RawQuery: "challenge=c-123"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(get.Msg.GetBody().GetData()); got != "c-123" || get.Msg.GetStatusCode() != 200 {
		t.Fatalf("GET answered %d %q, want the challenge", get.Msg.GetStatusCode(), got)
	}
	post, err := s.TriggerWebhook(t.Context(), connect.NewRequest(&runtimev1.TriggerWebhookRequest{Path: path, RawQuery: "id=1&id=2",
		Headers: map[string]string{"user-agent": "Sender/2"}, Body: &httpbody.HttpBody{ContentType: "application/json", Data: []byte(`{}`)}}))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Agent string   `json:"agent"`
		IDs   []string `json:"ids"`
	}
	if err := json.Unmarshal(post.Msg.GetBody().GetData(), &got); err != nil || got.Agent != "Sender/2" || len(got.IDs) != 2 || got.IDs[1] != "2" || post.Msg.GetStatusCode() != 202 {
		t.Fatalf("POST answered %d %s", post.Msg.GetStatusCode(), post.Msg.GetBody().GetData())
	}
}

func TestWebhookRequestHashSeesMethodAndRepeatedValues(t *testing.T) {
	t.Parallel()
	post := &runtimev1.TriggerWebhookRequest{Query: map[string]string{"id": "1"}}
	base := webhookRequestHash(post)
	if base != requestHash(post) {
		t.Fatal("a POST without a raw query hashes differently than before")
	}
	seen := map[string]bool{base: true}
	for _, msg := range []*runtimev1.TriggerWebhookRequest{
		{Method: "GET", Query: map[string]string{"id": "1"}},
		{Query: map[string]string{"id": "1"}, RawQuery: "id=1"},
		{Query: map[string]string{"id": "1"}, RawQuery: "id=1&id=2"},
	} {
		h := webhookRequestHash(msg)
		if seen[h] {
			t.Fatalf("%v hashes like an earlier request", msg)
		}
		seen[h] = true
	}
}
