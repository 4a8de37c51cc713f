package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// A Connect unary call that leaves out Connect-Protocol-Version, as
// Connect's own curl examples do, is answered as one that sends it, over
// JSON and binary, success and error alike.
func TestConnectCallWithoutProtocolVersion(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, base := startGateway(t, b.cfg)
	client := http1Client(t)
	binary := executeMessage("hello")
	call := func(contentType, body string, version bool) string {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost,
			base+"/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", contentType)
		req.Header.Set("X-Request-Id", "same")
		if version {
			req.Header.Set("Connect-Protocol-Version", "1")
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, _ := io.ReadAll(res.Body)
		return res.Status + " " + res.Header.Get("Content-Type") + "\n" + string(data)
	}
	for _, tc := range []struct{ contentType, body, want string }{
		{"application/json", `{"workflowDefinition":{"name":"hello"}}`, `"output":"hello"`},
		{"application/json", `{"workflowDefinition":{"name":"missing"}}`, `"code":"not_found"`},
		{"application/proto", string(binary), "hello"},
	} {
		without, with := call(tc.contentType, tc.body, false), call(tc.contentType, tc.body, true)
		if without != with || !strings.Contains(without, tc.want) {
			t.Errorf("%s %s without the header:\n%s\nwith it:\n%s\nwant both to contain %q", tc.contentType, tc.body, without, with, tc.want)
		}
	}
}
