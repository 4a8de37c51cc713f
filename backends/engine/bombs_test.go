package engine_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime/metrics"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/flowgate/flowgate/backends/engine"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	"github.com/flowgate/flowgate/gen/go/workflow/engine/v1/enginev1connect"
)

// bomb is an expression that would build far more than the process has,
// or run long after its caller gave up.
type bomb struct {
	name    string
	expr    string // the value of a set node: a template
	invalid bool   // refused when validated (InvalidArgument) rather than when run
	// wide, if set, makes the set node's values that many lists each
	// holding one 100 kB string 150 times: each fits the value limit, all
	// together do not.
	wide int
}

var bombs = []bomb{
	{name: "repeat", expr: `{{ len(repeat(repeat("x", 100000), 1000000)) }}`},
	{name: "nested joins", expr: `{{ let a = map(1..300, "xxxxxxxxxx"); let b = map(1..300, join(a)); let c = map(1..300, join(b)); let d = map(1..300, join(c)); len(join(d)) }}`},
	{name: "concatenation in a loop", expr: `{{ len(reduce(1..64, #acc + #acc, "x")) }}`},
	{name: "list doubling", expr: `{{ len(reduce(1..40, concat(#acc, #acc), [1])) }}`},
	{name: "huge range", expr: `{{ len(1..1000000000) }}`},
	{name: "deep nesting", expr: `{{ reduce(1..90000, [#acc], 0) }}`},
	{name: "deep brackets", expr: "{{ " + strings.Repeat("(", 300000) + "1" + strings.Repeat(")", 300000) + " }}", invalid: true},
	{name: "big list literal", expr: "{{ [" + strings.Repeat("1,", 100000) + "1] }}", invalid: true},
	{name: "big map literal", expr: "{{ {" + strings.Repeat(`"k": 1, `, 50000) + `"z": 1} }}`, invalid: true},
	{name: "template expansion", expr: `x{{ map(1..50000, trigger.s) }}x`},
	{name: "toJSON", expr: `{{ len(toJSON(map(1..50000, trigger.s))) }}`},
	{name: "string()", expr: `{{ len(string(map(1..50000, trigger.s))) }}`},
	{name: "node output", expr: `{{ map(1..50000, trigger.s) }}`},
	{name: "replace", expr: `{{ len(replace(trigger.s, "", trigger.s)) }}`},
	{name: "method result in a loop", expr: `{{ len(join(map(1..50000, now().Format(trigger.s)))) }}`},
	{name: "wide output", wide: 200},
	{name: "busy loop", expr: `{{ all(trigger.list, all(trigger.list, all(trigger.list, # >= 0))) }}`},
}

// bombOutcome is what the child reports for one bomb.
type bombOutcome struct {
	Name      string `json:"name"`
	Code      string `json:"code"` // RPC error code, "" for a successful RPC
	Status    string `json:"status"`
	Error     string `json:"error"`
	CPUAfter  int64  `json:"cpu_after_ms"` // CPU the process burned in the 300 ms after the answer
	HeapAfter uint64 `json:"heap_after"`
}

const bombChildEnv = "FLOWGATE_ENGINE_BOMB_CHILD"

// heapCeiling is where the child gives up rather than take the machine
// down with it; the bounded run stays far below it.
const heapCeiling = 1 << 30

// TestExpressionBombs runs every bomb through ExecuteWorkflow served over
// Connect, in a child process (a bomb that gets through must not take
// the test binary with it), and checks that each is refused with a clear
// error, that the process survives and that its heap stays bounded.
func TestExpressionBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a child process")
	}
	t.Parallel()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBombChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), bombChildEnv+"=1", "GOMAXPROCS=2")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	results := map[string]bombOutcome{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var o bombOutcome
		if json.Unmarshal(sc.Bytes(), &o) == nil && o.Name != "" {
			results[o.Name] = o
		}
	}
	if err != nil {
		t.Fatalf("the child died (%v) after %d bombs, running %q: %s", err, len(results), nextBomb(results), head(stderr.String(), 600))
	}
	peak := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	t.Logf("child peak RSS %d MiB", peak>>20)
	if peak > 768<<20 {
		t.Errorf("child peak RSS %d MiB, want it bounded well below a GiB", peak>>20)
	}
	for _, b := range bombs {
		checkBomb(t, b, results)
	}
}

func checkBomb(t *testing.T, b bomb, results map[string]bombOutcome) {
	t.Helper()
	o, ok := results[b.name]
	switch {
	case !ok:
		t.Errorf("%s: no result", b.name)
	case b.invalid && o.Code != connect.CodeInvalidArgument.String():
		t.Errorf("%s: code %q status %q (%s), want invalid_argument", b.name, o.Code, o.Status, o.Error)
	case !b.invalid && (o.Code != "" || o.Status != "failed" || !strings.Contains(o.Error, "resource exhausted")):
		t.Errorf("%s: code %q status %q error %q, want a failed run that says resource exhausted", b.name, o.Code, o.Status, tail(o.Error, 300))
	case o.CPUAfter > 150:
		t.Errorf("%s: the evaluation kept running after the answer (%d ms of CPU in the next second)", b.name, o.CPUAfter)
	case o.HeapAfter > 256<<20:
		t.Errorf("%s: %d MiB of heap still live after the run", b.name, o.HeapAfter>>20)
	}
}

// nextBomb is the first bomb without a result: the one that killed the child.
func nextBomb(results map[string]bombOutcome) string {
	for _, b := range bombs {
		if _, ok := results[b.name]; !ok {
			return b.name
		}
	}
	return ""
}

func head(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// TestBombChild is the child's side of TestExpressionBombs.
func TestBombChild(t *testing.T) {
	if os.Getenv(bombChildEnv) == "" {
		t.Skip("runs only as TestExpressionBombs' child")
	}
	go watchHeap()
	s, err := engine.New(engine.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(enginev1connect.NewWorkflowEngineServiceHandler(s))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	client := enginev1connect.NewWorkflowEngineServiceClient(srv.Client(), srv.URL, connect.WithReadMaxBytes(64<<20))
	list := make([]any, 1000)
	for i := range list {
		list[i] = float64(i)
	}
	trigger, err := structpb.NewStruct(map[string]any{"s": strings.Repeat("y", 100_000), "list": list})
	if err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(os.Stdout)
	only := os.Getenv(bombChildEnv + "_ONLY") // run one bomb by hand
	for _, b := range bombs {
		if only == "" || only == b.name {
			_ = enc.Encode(runBomb(t, client, b, trigger))
		}
	}
}

func runBomb(t *testing.T, client enginev1connect.WorkflowEngineServiceClient, b bomb, trigger *structpb.Struct) bombOutcome {
	values := map[string]any{"x": b.expr}
	for i := range b.wide {
		values[fmt.Sprintf("k%d", i)] = "{{ map(1..150, trigger.s) }}"
	}
	d := def([]*enginev1.Node{n("start", "trigger", nil), n("s", "set", map[string]any{"values": values})}, c("start", "s"))
	res, err := client.ExecuteWorkflow(t.Context(), connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: d, TriggerData: trigger}))
	o := bombOutcome{Name: b.name}
	if err != nil {
		o.Code, o.Error = connect.CodeOf(err).String(), err.Error()
	} else {
		o.Status, o.Error = res.Msg.GetResult().GetStatus(), res.Msg.GetResult().GetError()
	}
	before := cpuTime()
	time.Sleep(300 * time.Millisecond)
	o.CPUAfter = (cpuTime() - before).Milliseconds()
	o.HeapAfter = liveHeap()
	return o
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func liveHeap() uint64 {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// watchHeap ends the child before a bomb that got through takes the
// machine's memory: the parent sees the exit and the last bomb reported.
func watchHeap() {
	for range time.Tick(2 * time.Millisecond) {
		if h := liveHeap(); h > heapCeiling {
			fmt.Fprintf(os.Stderr, "heap reached %d MiB: a bomb got through\n", h>>20)
			os.Exit(2)
		}
	}
}
