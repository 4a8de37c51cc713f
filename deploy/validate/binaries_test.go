package validate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// root is the repository's top directory.
const root = "../.."

// binary is one of the image's commands, built from this checkout, with
// the flags and environment variables its -h lists.
type binary struct {
	name  string
	path  string
	flags map[string]bool
	env   map[string]bool
}

var binaries = map[string]*binary{}

// TestMain builds flowgate and flowgate-backends once, so that the tests
// judge the manifests by what the binaries really accept.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "flowgate-validate-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := func() int {
		build := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "./cmd/flowgate", "./cmd/flowgate-backends")
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
			return 1
		}
		for _, name := range []string{"flowgate", "flowgate-backends"} {
			b, err := describe(name, filepath.Join(dir, name))
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			binaries[name] = b
		}
		return m.Run()
	}()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var (
	flagLine = regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`)
	envName  = regexp.MustCompile(`\(env ([A-Z0-9_]+)\)`)
	otelName = regexp.MustCompile(`\bOTEL_[A-Z0-9_]+\b`)
)

func describe(name, path string) (*binary, error) {
	var out bytes.Buffer
	cmd := exec.Command(path, "-h")
	cmd.Env = []string{}
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s -h: %w\n%s", name, err, out.String())
	}
	b := &binary{name: name, path: path, flags: map[string]bool{}, env: map[string]bool{}}
	for _, m := range flagLine.FindAllStringSubmatch(out.String(), -1) {
		b.flags[m[1]] = true
	}
	for _, m := range envName.FindAllStringSubmatch(out.String(), -1) {
		b.env[m[1]] = true
	}
	for _, m := range otelName.FindAllString(out.String(), -1) {
		b.env[m] = true
	}
	if len(b.flags) < 5 || len(b.env) < 5 {
		return nil, fmt.Errorf("%s -h lists %d flags and %d variables: is its usage text still what this test parses?", name, len(b.flags), len(b.env))
	}
	return b, nil
}

// knowsEnv reports whether the binary reads the variable. OTEL_* variables
// are read by the OpenTelemetry SDK as its specification lists them; the
// usage text names the main ones and ends the list with "...".
func (b *binary) knowsEnv(name string) bool {
	return b.env[name] || strings.HasPrefix(name, "OTEL_")
}

// check runs the binary with args and env and -h, which parses every flag
// and variable as a real start would and exits non-zero on a bad value;
// and it refuses variables and flags the binary does not have.
func (b *binary) check(t *testing.T, where string, args []string, env map[string]string) {
	t.Helper()
	for name := range env {
		if !b.knowsEnv(name) {
			t.Errorf("%s: %s reads no variable %s", where, b.name, name)
		}
	}
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !b.flags[name] {
			t.Errorf("%s: %s has no flag %q", where, b.name, a)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.path, append(slices.Clone(args), "-h")...)
	cmd.Env = []string{}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			t.Errorf("%s: %s refuses its configuration: %s", where, b.name, lines[len(lines)-1])
			return
		}
		t.Errorf("%s: %s: %v", where, b.name, err)
	}
}

// dockerfile is what the image build says about the binaries.
type dockerfile struct {
	installed  map[string]bool // paths of the binaries in the final image
	entrypoint string
}

var (
	buildLine = regexp.MustCompile(`-o /out/([a-z-]+) \./cmd/([a-z-]+)`)
	copyLine  = regexp.MustCompile(`(?m)^COPY --from=build ((?:/out/[a-z-]+ )+)(/\S+/)$`)
	entryLine = regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"\]`)
)

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	built := map[string]bool{}
	for _, m := range buildLine.FindAllStringSubmatch(text, -1) {
		if m[1] != m[2] {
			t.Errorf("Dockerfile: ./cmd/%s is built as %s", m[2], m[1])
		}
		built[m[1]] = true
	}
	d := dockerfile{installed: map[string]bool{}}
	for _, m := range copyLine.FindAllStringSubmatch(text, -1) {
		for _, src := range strings.Fields(m[1]) {
			name := strings.TrimPrefix(src, "/out/")
			if built[name] {
				d.installed[m[2]+name] = true
			}
		}
	}
	if m := entryLine.FindStringSubmatch(text); m != nil {
		d.entrypoint = m[1]
	}
	for name := range binaries {
		if !d.installed["/usr/local/bin/"+name] {
			t.Errorf("Dockerfile: %s is not built into /usr/local/bin", name)
		}
	}
	return d
}

// binaryFor says which binary a container runs: its command, or the
// image's entry point.
func binaryFor(t *testing.T, d dockerfile, where string, command []string) *binary {
	t.Helper()
	path := d.entrypoint
	if len(command) > 0 {
		path = command[0]
	}
	if !d.installed[path] {
		t.Errorf("%s: runs %q, which the image does not have", where, path)
		return nil
	}
	return binaries[filepath.Base(path)]
}
