package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMRecordsRunningExecutionsInterrupted stops a flowgate process
// with SIGTERM while two executions run: the one that finishes within the
// shutdown timeout is recorded as it ended, the other as interrupted, with
// the nodes it had finished; the engine is not closed under them.
func TestSIGTERMRecordsRunningExecutionsInterrupted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base, stop := runProcess(t, io.Discard, nil, "-listen", "127.0.0.1:0", "-data-dir", dir, "-shutdown-timeout", "3s")
	short := runManual(t, base, "short", "1500ms")
	long := runManual(t, base, "long", "60s")
	deadline := time.Now().Add(10 * time.Second)
	for nodeStatus(getExecution(t, base, long), "ack") != "succeeded" {
		if time.Now().After(deadline) {
			t.Fatal("the long execution never reached its delay")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	// A new process over the same database reads what the first recorded.
	base2, stop2 := runProcess(t, io.Discard, nil, "-listen", "127.0.0.1:0", "-data-dir", dir, "-shutdown-timeout", "1s")
	defer func() { _ = stop2() }()
	if e := getExecution(t, base2, short); e["status"] != "succeeded" {
		t.Errorf("the execution that ended within the shutdown timeout: %v", e)
	}
	e := getExecution(t, base2, long)
	if e["status"] != "interrupted" || !strings.Contains(e["error"].(string), "shut down") ||
		nodeStatus(e, "ack") != "succeeded" || nodeStatus(e, "last") == "succeeded" {
		t.Errorf("the execution cut by the shutdown: %v", e)
	}
}

// runManual deploys a workflow that acknowledges, waits for delay and
// sets a value, runs it by its manual trigger and returns the execution id.
func runManual(t *testing.T, base, name, delay string) string {
	t.Helper()
	dep := postJSON(t, base+"/api/v1/workflow/deployments", `{"name":"`+name+`","triggers":[{"type":"manual"}],"workflow_definition":{"nodes":[
		{"id":"start","type":"trigger"},
		{"id":"ack","type":"set","parameters":{"values":{"step":1}}},
		{"id":"wait","type":"delay","parameters":{"duration":"`+delay+`"}},
		{"id":"last","type":"set","parameters":{"values":{"step":2}}}],
		"connections":[{"source":"start","target":"ack"},{"source":"ack","target":"wait"},{"source":"wait","target":"last"}]}}`, http.StatusOK)
	run := postJSON(t, base+"/api/v1/workflow/deployments/"+dep["deployment_id"].(string)+"/run", `{}`, http.StatusAccepted)
	return run["execution_id"].(string)
}

func postJSON(t *testing.T, url, body string, want int) map[string]any {
	t.Helper()
	res, err := http.Post(url, "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var doc map[string]any
	data, _ := io.ReadAll(res.Body)
	if res.StatusCode != want || json.Unmarshal(data, &doc) != nil {
		t.Fatalf("POST %s: %d %s, want %d", url, res.StatusCode, data, want)
	}
	return doc
}

func getExecution(t *testing.T, base, id string) map[string]any {
	t.Helper()
	res, err := http.Get(base + "/api/v1/executions/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var doc map[string]any
	if err := json.NewDecoder(res.Body).Decode(&doc); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET execution %s: %d %v", id, res.StatusCode, err)
	}
	return doc
}

func nodeStatus(e map[string]any, id string) string {
	nodes, _ := e["node_results"].([]any)
	for _, n := range nodes {
		if m, _ := n.(map[string]any); m["node_id"] == id {
			s, _ := m["status"].(string)
			return s
		}
	}
	return ""
}

// TestKilledProcessLeavesProgressAndFreesIdempotencyKeys kills a flowgate
// process (kill -9) during a webhook's execution: the next process marks it
// interrupted with the nodes that had finished, and the sender's retry with
// the same Idempotency-Key starts a new attempt instead of answering with
// the interrupted one.
func TestKilledProcessLeavesProgressAndFreesIdempotencyKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := []string{"FLOWGATE_TEST_MAIN=1"}
	base, pid, stop := runBinary(t, os.Args[0], io.Discard, env, "-listen", "127.0.0.1:0", "-data-dir", dir)
	dep := postJSON(t, base+"/api/v1/workflow/deployments", `{"name":"hook","triggers":[{"type":"webhook","path":"slow"}],"workflow_definition":{"nodes":[
		{"id":"start","type":"trigger"},
		{"id":"ack","type":"set","parameters":{"values":{"step":1}}},
		{"id":"wait","type":"delay","parameters":{"duration":"60s"}}],
		"connections":[{"source":"start","target":"ack"},{"source":"ack","target":"wait"}]}}`, http.StatusOK)
	hook := dep["webhook_url"].(string)
	hook = base + hook[strings.Index(hook, "/api/v1/webhooks/"):]
	send := func(base string) map[string]any {
		req, _ := http.NewRequest(http.MethodPost, hook, strings.NewReader(`{"order":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "order-1")
		req.URL.Host = strings.TrimPrefix(base, "http://")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var doc map[string]any
		if err := json.NewDecoder(res.Body).Decode(&doc); err != nil || res.StatusCode != http.StatusAccepted {
			t.Fatalf("webhook: %d %v %v", res.StatusCode, doc, err)
		}
		return doc
	}
	first := send(base)["execution_id"].(string)
	deadline := time.Now().Add(10 * time.Second)
	for nodeStatus(getExecution(t, base, first), "ack") != "succeeded" {
		if time.Now().After(deadline) {
			t.Fatal("the execution never reached its delay")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = stop() // reaps the killed process

	base2, stop2 := runProcess(t, io.Discard, nil, "-listen", "127.0.0.1:0", "-data-dir", dir, "-shutdown-timeout", "1s")
	defer func() { _ = stop2() }()
	e := getExecution(t, base2, first)
	if e["status"] != "interrupted" || nodeStatus(e, "ack") != "succeeded" || nodeStatus(e, "wait") == "succeeded" {
		t.Errorf("the killed execution: %v", e)
	}
	again := send(base2)
	if again["execution_id"] == first || again["status"] != "running" {
		t.Errorf("the retry with the same key: %v, want a new running attempt", again)
	}
	if got := getExecution(t, base2, again["execution_id"].(string)); got["retry_of"] != first {
		t.Errorf("retry_of = %v, want %s", got["retry_of"], first)
	}
}
