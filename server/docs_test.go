package server

import (
	"encoding/json"
	"io"
	"strings"
	"testing"
)

func TestDocsAndOpenAPI(t *testing.T) {
	t.Parallel()
	b := startTestBackends(t)
	_, url := startGateway(t, b.cfg)

	res, err := http1Client(t).Get(url + "/docs")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page), "/openapi.json") {
		t.Fatalf("/docs: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}

	res, err = http1Client(t).Get(url + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(res.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	// Every route of the contract, with its method.
	want := map[string]string{
		"/api/v1/session":                                  "post",
		"/api/v1/chat/stream":                              "get",
		"/api/v1/workflow_generation":                      "get",
		"/api/v1/workflow/execute":                         "post",
		"/api/v1/workflow/deployments":                     "get post",
		"/api/v1/workflow/deployments/{deployment_id}":     "get put delete",
		"/api/v1/executions":                               "get",
		"/api/v1/executions/{execution_id}":                "get",
		"/api/v1/webhooks/{path}":                          "post",
		"/health":                                          "get",
		"/api/v1/health":                                   "get",
		"/api/v1/workflow/deployments/{deployment_id}/run": "post",
	}
	// The executions lifecycle.
	want["/api/v1/workflow/deployments/{deployment_id}/versions"] = "get"
	want["/api/v1/executions/{execution_id}/cancel"] = "post"
	want["/api/v1/executions/{execution_id}/retry"] = "post"
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi = %q", doc.OpenAPI)
	}
	for path, methods := range want {
		for _, m := range strings.Fields(methods) {
			if _, ok := doc.Paths[path][m]; !ok {
				t.Errorf("the OpenAPI document lacks %s %s", strings.ToUpper(m), path)
			}
		}
	}
	if len(doc.Paths) != len(want) {
		t.Errorf("the OpenAPI document has %d paths, want %d", len(doc.Paths), len(want))
	}
	if !strings.Contains(string(doc.Paths["/api/v1/executions"]["get"]), `"page_size"`) {
		t.Error("ListExecutions lacks its page_size query parameter")
	}
}
