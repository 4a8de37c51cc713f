package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/server"
)

// webOutcome is what Google's grpc-web client reported for one call (see
// grpcweb/client.ts).
type webOutcome struct {
	Name     string   `json:"name"`
	Code     int      `json:"code"`
	Message  string   `json:"message"`
	Messages []string `json:"messages"`
	Status   *int     `json:"status"`
	Ended    bool     `json:"ended"`
}

func (o webOutcome) String() string {
	status := "none"
	if o.Status != nil {
		status = strconv.Itoa(*o.Status)
	}
	return fmt.Sprintf("code %d %q, status %s, ended %t, messages %q", o.Code, o.Message, status, o.Ended, o.Messages)
}

// compileWebClient compiles grpcweb/client.ts and the stubs in gen/ts to
// CommonJS in a temporary directory and returns the script and the
// node_modules it needs. Without node or the npm packages (npm ci) the
// test is skipped, except in CI, where their absence is a failure.
func compileWebClient(t *testing.T) (script, modules string) {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	modules = filepath.Join(root, "node_modules")
	tsc := filepath.Join(modules, ".bin", "tsc")
	_, nodeErr := exec.LookPath("node")
	missing := nodeErr != nil
	for _, need := range []string{tsc, filepath.Join(modules, "grpc-web"), filepath.Join(modules, "xhr2")} {
		if _, err := os.Stat(need); err != nil {
			missing = true
		}
	}
	if missing {
		if os.Getenv("CI") != "" {
			t.Fatal("CI must run the grpc-web client test: node and the npm packages (npm ci) are required")
		}
		t.Skip("node or the npm packages are missing (install Node 20 and run npm ci)")
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tsc, "-p", filepath.Join(root, "e2e", "grpcweb", "tsconfig.json"), "--outDir", out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc: %v\n%s", err, msg)
	}
	return filepath.Join(out, "e2e", "grpcweb", "client.js"), modules
}

// runWebClient runs the client against a gateway in one wire mode.
func runWebClient(t *testing.T, script, modules, url, mode string) map[string]webOutcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script, url, mode)
	cmd.Env = append(os.Environ(), "NODE_PATH="+modules)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr.String())
	}
	outcomes := map[string]webOutcome{}
	lines := bufio.NewScanner(bytes.NewReader(stdout))
	for lines.Scan() {
		var o webOutcome
		if err := json.Unmarshal(lines.Bytes(), &o); err != nil {
			t.Fatalf("client output %q: %v", lines.Text(), err)
		}
		outcomes[o.Name] = o
	}
	if len(outcomes) != 5 {
		t.Fatalf("client reported %d calls, want 5:\n%s", len(outcomes), stdout)
	}
	return outcomes
}

// wantOutcome checks the code and message the client reported.
func wantOutcome(t *testing.T, got map[string]webOutcome, name string, code int, message string) webOutcome {
	t.Helper()
	o := got[name]
	if o.Code != code || !strings.Contains(o.Message, message) {
		t.Errorf("%s: code %d %q, want %d and a message containing %q", name, o.Code, o.Message, code, message)
	}
	return o
}

// TestGoogleGRPCWebClient drives the official grpc-web client, in its
// text (default) and binary modes, through a gateway in front of the
// reference backends: successes, errors with their codes and messages, a
// stream that ends well and one that fails; then through a gateway that
// refuses the calls before they reach the transcoder (no credentials).
func TestGoogleGRPCWebClient(t *testing.T) {
	t.Parallel()
	script, modules := compileWebClient(t)
	open := startStack(t)
	secured := startStack(t, func(cfg *server.Config) {
		cfg.Security.APIKeys = interceptors.HashAPIKey("e2e-grpcweb-key") + ":svc:acme:agent:chat"
	})
	for _, mode := range []string{"text", "binary"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			got := runWebClient(t, script, modules, open.url, mode)
			if created := wantOutcome(t, got, "create session", 0, ""); len(created.Messages) != 1 || created.Messages[0] == "" {
				t.Errorf("create session returned %q", created.Messages)
			}
			wantOutcome(t, got, "invalid action", 3, "action: must be create or edit")
			wantOutcome(t, got, "missing deployment", 5, `deployment "no-such-deployment" not found`)
			chat := wantOutcome(t, got, "chat", 0, "")
			if len(chat.Messages) == 0 || !chat.Ended || chat.Status == nil || *chat.Status != 0 {
				t.Errorf("chat: %v; want messages, status 0 and an end", chat)
			}
			failed := wantOutcome(t, got, "chat in a missing session", 5, `session "no-such-session" not found`)
			if failed.Status == nil || *failed.Status != 5 {
				t.Errorf("failed stream: %v; want status 5", failed)
			}
		})
		t.Run(mode+"/unauthenticated", func(t *testing.T) {
			t.Parallel()
			got := runWebClient(t, script, modules, secured.url, mode)
			for name := range got {
				wantOutcome(t, got, name, 16, "missing credentials")
			}
		})
	}
}
