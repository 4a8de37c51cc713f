// Command flowgate-backends runs Flowgate's reference implementations of
// the Workflow Agent, Workflow Runtime and Workflow Engine as gRPC servers
// (cleartext HTTP/2, also Connect and gRPC-Web) on the seed's ports 50051,
// 50052 and 50053, for a gateway started with their addresses.
//
// Run "flowgate-backends -h" for every flag and the environment variable
// behind it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/cmd/internal/flagenv"
	"github.com/flowgate/flowgate/cmd/internal/otelenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	flagenv.Exit("flowgate-backends", err)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("flowgate-backends", flag.ContinueOnError)
	fs.SetOutput(stderr)
	set := flagenv.New(fs, getenv)
	var (
		cfg             backends.Config
		host            string
		ports           [3]int
		debug           bool
		logFormat       string
		shutdownTimeout time.Duration
	)
	var key string
	set.String(&host, "host", "FLOWGATE_BACKENDS_HOST", "127.0.0.1", "interface to listen on (\"\" or 0.0.0.0 for all; calls still need the gateway's token)")
	set.String(&key, "backend-key", "FLOWGATE_BACKEND_KEY", "", "key shared with the gateway, at least 32 bytes; calls must carry a token signed with it (required)")
	set.Int(&ports[0], "agent-port", "WORKFLOW_AGENT_PORT", 50051, "port of the workflow agent")
	set.Int(&ports[1], "runtime-port", "WORKFLOW_RUNTIME_PORT", 50052, "port of the workflow runtime")
	set.Int(&ports[2], "engine-port", "WORKFLOW_ENGINE_PORT", 50053, "port of the workflow engine")
	set.String(&cfg.DataDir, "data-dir", "FLOWGATE_DATA_DIR", "./data", "directory of the SQLite database")
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL instead of SQLite")
	set.String(&cfg.PublicURL, "public-url", "FLOWGATE_PUBLIC_URL", "http://localhost:8080", "public base URL of the gateway, for webhook URLs")
	set.List(&cfg.EngineHTTPAllowHosts, "engine-allow-hosts", "FLOWGATE_ENGINE_ALLOW_HOSTS", nil, "hosts http_request nodes may reach although they resolve to private or loopback addresses")
	set.String(&cfg.OpenAI.BaseURL, "openai-base-url", "OPENAI_BASE_URL", "", "OpenAI-compatible API base URL for the agent (default: the offline planner)")
	set.String(&cfg.OpenAI.APIKey, "openai-api-key", "OPENAI_API_KEY", "", "API key of the OpenAI-compatible API")
	set.String(&cfg.OpenAI.Model, "openai-model", "OPENAI_MODEL", "", "model of the OpenAI-compatible API")
	set.Bool(&debug, "debug", "DEBUG", false, "log at debug level")
	set.String(&logFormat, "log-format", "FLOWGATE_LOG_FORMAT", "json", "log format: json or text")
	set.Duration(&shutdownTimeout, "shutdown-timeout", "FLOWGATE_SHUTDOWN_TIMEOUT", 15*time.Second, "time allowed to drain in-flight calls on SIGINT/SIGTERM")
	set.Notes = otelenv.Usage
	if err := set.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	var logger *slog.Logger
	switch logFormat {
	case "json":
		logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	case "text":
		logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	default:
		return fmt.Errorf("log format %q: want json or text", logFormat)
	}
	cfg.Logger = logger
	if key == "" {
		return errors.New("set -backend-key (FLOWGATE_BACKEND_KEY), the same key as the gateway's: the backends accept only calls it signed")
	}
	cfg.AuthKey = []byte(key)
	tp, stopTracing, err := otelenv.TracerProvider(ctx, getenv, "flowgate-backends", "", logger)
	if err != nil {
		return err
	}
	defer otelenv.Flush(ctx, stopTracing, shutdownTimeout, logger)
	cfg.TracerProvider = tp

	var lns [3]net.Listener
	for i, port := range ports {
		if port < 0 || port > 65535 {
			return fmt.Errorf("port %d is out of range", port)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns[:i] {
				_ = l.Close()
			}
			return fmt.Errorf("could not listen on port %d: %w", port, err)
		}
		lns[i] = ln
	}
	b, err := backends.Start(ctx, cfg, backends.Listeners{Agent: lns[0], Runtime: lns[1], Engine: lns[2]})
	if err != nil {
		return err
	}
	agent, runtime, engine := b.Addrs()
	logger.Info("flowgate backends serving", slog.String("agent", agent), slog.String("runtime", runtime), slog.String("engine", engine))
	fmt.Fprintf(stdout, "workflow agent on %s, runtime on %s, engine on %s\n", agent, runtime, engine)
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-b.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	return errors.Join(serveErr, b.Shutdown(shutdownCtx))
}
