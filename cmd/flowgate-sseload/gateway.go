package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/flowgate/flowgate/server"
)

// serveGatewayFlag makes this binary run the gateway itself, with a debug
// listener, instead of measuring one. The load run re-executes itself this
// way when no -flowgate binary is given, so that the gateway's live heap and
// goroutine stacks can be read (after a forced GC, independent of GOGC and
// GOMEMLIMIT) and profiled. The gateway is the same server.New as
// cmd/flowgate's with remote backends; only the debug listener is added.
const serveGatewayFlag = "-serve-gateway"

// memStats is what the child gateway's /debug/memstats reports.
type memStats struct {
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	HeapAlloc  uint64 `json:"heap_alloc"`
	Sys        uint64 `json:"sys"`
	Goroutines int    `json:"goroutines"`
}

func (m memStats) live() uint64 { return m.HeapInuse + m.StackInuse }

func serveGateway(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgate-sseload "+serveGatewayFlag, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var listen, debugListen, agent, runtimeAddr, engine, apiKeys string
	var heartbeat time.Duration
	fs.StringVar(&listen, "listen", "", "gateway address")
	fs.StringVar(&debugListen, "debug-listen", "", "pprof and memstats address")
	fs.StringVar(&agent, "agent", "", "agent address")
	fs.StringVar(&runtimeAddr, "runtime", "", "runtime address")
	fs.StringVar(&engine, "engine", "", "engine address")
	fs.DurationVar(&heartbeat, "sse-heartbeat", 15*time.Second, "SSE heartbeat interval")
	fs.StringVar(&apiKeys, "api-keys", "", "accepted API keys, as flowgate's -api-keys")
	if err := fs.Parse(args); err != nil {
		return err
	}
	gw, err := server.New(server.Config{
		Agent:       server.Upstream{Address: agent},
		Runtime:     server.Upstream{Address: runtimeAddr},
		Engine:      server.Upstream{Address: engine},
		MaxTimeout:  time.Minute,
		DialTimeout: 5 * time.Second,
		SSE:         server.SSEConfig{Heartbeat: heartbeat, Retry: 3 * time.Second},
		// One load client holds every stream from one address and key.
		Security: server.SecurityConfig{MaxBodyBytes: 4 << 20, APIKeys: apiKeys, MaxConnsPerIP: -1, MaxStreamsPerCaller: -1},
	})
	if err != nil {
		return err
	}
	defer gw.Close()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	dln, err := net.Listen("tcp", debugListen)
	if err != nil {
		_ = ln.Close()
		return err
	}
	debug := &http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = debug.Serve(dln) }()
	defer debug.Close()
	return gw.Serve(ctx, ln)
}

func debugMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/memstats", func(w http.ResponseWriter, _ *http.Request) {
		// Two collections: the first may leave objects freed by finalizers.
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		_ = json.NewEncoder(w).Encode(memStats{
			HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, HeapAlloc: ms.HeapAlloc,
			Sys: ms.Sys, Goroutines: runtime.NumGoroutine(),
		})
	})
	return mux
}

// selfGatewayArgs is the command line that runs this binary as the gateway.
func selfGatewayArgs(addr, debugAddr, agent, runtimeAddr, engine string, heartbeat time.Duration) []string {
	return []string{serveGatewayFlag, "-listen", addr, "-debug-listen", debugAddr,
		"-agent", agent, "-runtime", runtimeAddr, "-engine", engine, "-sse-heartbeat", heartbeat.String()}
}

// memStats reads the child gateway's live memory; zero without a debug
// listener (an external -flowgate binary).
func (g *gateway) memStats(ctx context.Context) (memStats, error) {
	var m memStats
	if g.debug == "" {
		return m, errors.New("no debug listener")
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.debug+"/debug/memstats", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// saveProfiles writes the child gateway's heap profile and goroutine dump
// into dir.
func (g *gateway) saveProfiles(ctx context.Context, dir, label string) error {
	if g.debug == "" || dir == "" {
		return nil
	}
	for name, query := range map[string]string{"heap": "heap?gc=1", "goroutine": "goroutine?debug=1"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.debug+"/debug/pprof/"+query, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		data, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		ext := ".pb.gz"
		if strings.HasPrefix(name, "goroutine") {
			ext = ".txt"
		}
		if err := os.WriteFile(fmt.Sprintf("%s/%s-%s%s", dir, label, name, ext), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
