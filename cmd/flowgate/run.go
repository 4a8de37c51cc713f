package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/flowgate/flowgate/backends"
	"github.com/flowgate/flowgate/cmd/internal/flagenv"
	"github.com/flowgate/flowgate/cmd/internal/logbuf"
	"github.com/flowgate/flowgate/cmd/internal/otelenv"
	"github.com/flowgate/flowgate/interceptors"
	"github.com/flowgate/flowgate/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// options is everything the command line and environment say.
type options struct {
	listen          string
	debug           bool
	logFormat       string
	upstreams       [3]upstreamFlags // agent, runtime, engine
	maxTimeout      time.Duration
	dialTimeout     time.Duration
	maxInFlight     int
	retryAttempts   int
	retryBudget     float64
	resolveInterval time.Duration
	netHTTPGRPC     bool
	netHTTP1        bool
	upstreamGRPCGo  bool
	transcodeREST   bool
	shutdownTimeout time.Duration
	drainDelay      time.Duration
	metrics         bool
	console         bool
	forwardHeaders  []string
	sseHeartbeat    time.Duration
	sseRetry        time.Duration
	tlsCert, tlsKey string
	pprofListen     string
	gogc            string
	memoryLimit     string
	embedded        backends.Config
	security        server.SecurityConfig
}

type upstreamFlags struct {
	name     string
	host     string
	port     int
	protocol string
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("flowgate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	set := flagenv.New(fs, getenv)
	o := &options{}
	set.String(&o.listen, "listen", "FLOWGATE_LISTEN", ":8080", "address to serve on")
	set.Bool(&o.debug, "debug", "DEBUG", false, "log at debug level")
	set.String(&o.logFormat, "log-format", "FLOWGATE_LOG_FORMAT", "json", "log format: json or text")
	for i, svc := range []struct {
		name, env string
		port      int
	}{{"agent", "WORKFLOW_AGENT", 50051}, {"runtime", "WORKFLOW_RUNTIME", 50052}, {"engine", "WORKFLOW_ENGINE", 50053}} {
		u := &o.upstreams[i]
		u.name = svc.name
		set.String(&u.host, svc.name+"-host", svc.env+"_HOST", "", "host of the remote workflow "+svc.name+", or its replicas: hosts separated by commas, or dns:///name re-resolved periodically; unset for the embedded one")
		set.Int(&u.port, svc.name+"-port", svc.env+"_PORT", svc.port, "port of the remote workflow "+svc.name+" (of each host that names none)")
		set.String(&u.protocol, svc.name+"-protocol", "FLOWGATE_"+strings.ToUpper(svc.name)+"_PROTOCOL", "grpc", "protocol spoken to the workflow "+svc.name+": grpc, connect or grpcweb")
	}
	set.Duration(&o.maxTimeout, "max-timeout", "FLOWGATE_MAX_TIMEOUT", time.Minute, "longest deadline a call may ask for; the deadline of unary calls that ask for none")
	set.Duration(&o.dialTimeout, "dial-timeout", "FLOWGATE_DIAL_TIMEOUT", 5*time.Second, "time allowed to connect to an upstream")
	set.Bool(&o.netHTTP1, "http1-net-http", "FLOWGATE_HTTP1_NET_HTTP", false, "serve every HTTP/1.1 connection with net/http, instead of with the gateway's own HTTP/1.1 loop for as long as its requests are ones the loop takes on")
	set.Bool(&o.upstreamGRPCGo, "upstream-grpc-go", "FLOWGATE_UPSTREAM_GRPC_GO", false, "make every call to a gRPC upstream with grpc-go's client, instead of making the unary calls it can over the gateway's own HTTP/2 connections")
	set.Bool(&o.netHTTPGRPC, "grpc-net-http", "FLOWGATE_GRPC_NET_HTTP", false, "serve gRPC callers with net/http like every other caller, instead of with grpc-go on connections whose first request is gRPC")
	set.Bool(&o.transcodeREST, "rest-transcode-all", "FLOWGATE_REST_TRANSCODE_ALL", false, "serve every REST call through the transcoder, including the JSON POSTs to routes without path variables that are otherwise served directly")
	set.Int(&o.maxInFlight, "upstream-max-in-flight", "FLOWGATE_UPSTREAM_MAX_IN_FLIGHT", 1024, "unary calls in flight to one upstream beyond which calls fail at once")
	set.Int(&o.retryAttempts, "upstream-retry-attempts", "FLOWGATE_UPSTREAM_RETRY_ATTEMPTS", 3, "tries of one call, retries included (1: never retry); only calls an upstream surely did not get, and reads, are retried")
	set.Float(&o.retryBudget, "upstream-retry-budget", "FLOWGATE_UPSTREAM_RETRY_BUDGET", 0.2, "retries allowed per upstream as a share of its calls of the last 10 s (plus 10)")
	set.Duration(&o.resolveInterval, "upstream-resolve-interval", "FLOWGATE_UPSTREAM_RESOLVE_INTERVAL", 10*time.Second, "how often a dns:/// upstream host is resolved again")
	set.Duration(&o.shutdownTimeout, "shutdown-timeout", "FLOWGATE_SHUTDOWN_TIMEOUT", 15*time.Second, "time allowed to drain in-flight calls on SIGINT/SIGTERM; what outlives it is cut, and the process still exits 0")
	set.Duration(&o.drainDelay, "drain-delay", "FLOWGATE_DRAIN_DELAY", 0, "time to keep serving after SIGINT/SIGTERM with /readyz answering 503, so that load balancers stop sending calls first (e.g. 5s on Kubernetes)")
	set.Bool(&o.metrics, "metrics", "FLOWGATE_METRICS", true, "serve Prometheus metrics on /metrics of the main port")
	set.Bool(&o.console, "console", "FLOWGATE_CONSOLE", true, "serve the web console at / (its assets under /console/)")
	set.List(&o.forwardHeaders, "forward-headers", "FLOWGATE_FORWARD_HEADERS", nil, "extra request headers forwarded to upstreams")
	set.Duration(&o.sseHeartbeat, "sse-heartbeat", "FLOWGATE_SSE_HEARTBEAT", 15*time.Second, "interval of comment heartbeats on SSE streams")
	set.Duration(&o.sseRetry, "sse-retry", "FLOWGATE_SSE_RETRY", 3*time.Second, "reconnection delay advised to EventSource clients (0: none, except 3s with a retryable error)")
	set.String(&o.tlsCert, "tls-cert", "FLOWGATE_TLS_CERT", "", "TLS certificate file (PEM); with -tls-key serves HTTPS with HTTP/2")
	set.String(&o.tlsKey, "tls-key", "FLOWGATE_TLS_KEY", "", "TLS private key file (PEM)")
	set.String(&o.pprofListen, "pprof-listen", "FLOWGATE_PPROF_LISTEN", "", "address of a separate listener serving /debug/pprof (keep it private; off when empty)")
	set.String(&o.gogc, "gogc", "GOGC", defaultGOGC, "garbage collector target percentage, as Go's GOGC, or off")
	set.String(&o.memoryLimit, "memory-limit", "GOMEMLIMIT", "", "soft memory limit, as Go's GOMEMLIMIT (e.g. 400MiB), or off (default: 90% of the container's memory limit, when it has one)")
	embeddedFlags(set, &o.embedded)
	securityFlags(set, &o.security)
	set.Notes = otelenv.Usage
	if err := set.Parse(args); err != nil {
		return nil, err
	}
	return o, nil
}

// embeddedFlags are the settings of the reference backends, used when they
// run in process.
func embeddedFlags(set *flagenv.Set, cfg *backends.Config) {
	set.String(&cfg.DataDir, "data-dir", "FLOWGATE_DATA_DIR", "./data", "directory of the embedded backends' SQLite database")
	set.String(&cfg.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL for the embedded backends instead of SQLite")
	set.String(&cfg.PublicURL, "public-url", "FLOWGATE_PUBLIC_URL", "", "public base URL of the gateway, for webhook URLs (default http://localhost:<listen port>)")
	set.List(&cfg.EngineHTTPAllowHosts, "engine-allow-hosts", "FLOWGATE_ENGINE_ALLOW_HOSTS", nil, "hosts http_request nodes may reach although they resolve to private or loopback addresses")
	set.String(&cfg.OpenAI.BaseURL, "openai-base-url", "OPENAI_BASE_URL", "", "OpenAI-compatible API base URL for the agent (default: the offline planner)")
	set.String(&cfg.OpenAI.APIKey, "openai-api-key", "OPENAI_API_KEY", "", "API key of the OpenAI-compatible API")
	set.String(&cfg.OpenAI.Model, "openai-model", "OPENAI_MODEL", "", "model of the OpenAI-compatible API")
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}
	if err := applyGOGC(o.gogc); err != nil {
		return err
	}
	if err := applyMemoryLimit(o.memoryLimit, "/sys/fs/cgroup"); err != nil {
		return err
	}
	// The log, an access log line per call among it, is written in batches
	// at most logFlushInterval apart.
	logOut := logbuf.New(stderr, 64<<10, logFlushInterval)
	defer logOut.Close()
	logger, err := newLogger(logOut, o.logFormat, o.debug)
	if err != nil {
		return err
	}
	upstreams, embedded, err := o.upstreamConfig()
	if err != nil {
		return err
	}
	tp, stopTracing, err := otelenv.TracerProvider(ctx, getenv, "flowgate", version, logger)
	if err != nil {
		return err
	}
	// Deferred first, so that it runs last: the spans of the calls drained
	// at shutdown are flushed too.
	defer otelenv.Flush(ctx, stopTracing, o.shutdownTimeout, logger)
	if !embedded && o.security.BackendKey == "" {
		// Not fatal: a remote backend that does not verify calls (a test
		// double, a load-test stub) still works; flowgate-backends refuses
		// every call, saying the gateway token is missing.
		logger.Warn("NO BACKEND KEY: calls to the remote backends carry no gateway token, " +
			"which flowgate-backends will refuse; set -backend-key (FLOWGATE_BACKEND_KEY) here and on the backends")
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("could not listen on %s: %w", o.listen, err)
	}
	defer ln.Close()
	if o.pprofListen != "" {
		stop, err := servePprof(o.pprofListen, logger)
		if err != nil {
			return err
		}
		defer stop()
	}

	if embedded {
		if o.security.BackendKey == "" {
			o.security.BackendKey = string(interceptors.GenerateBackendKey())
		}
		o.embedded.AuthKey = []byte(o.security.BackendKey)
		if o.embedded.PublicURL == "" {
			o.embedded.PublicURL = defaultPublicURL(ln.Addr(), o.tlsCert != "")
		}
		o.embedded.Logger = logger
		o.embedded.TracerProvider = tp
		ls, err := backends.LoopbackListeners()
		if err != nil {
			return err
		}
		b, err := backends.Start(ctx, o.embedded, ls)
		if err != nil {
			return fmt.Errorf("could not start the embedded backends: %w", err)
		}
		defer func() {
			shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.shutdownTimeout)
			defer cancel()
			if err := b.Shutdown(shutdownCtx); err != nil {
				logger.Warn("embedded backends did not stop cleanly", slog.Any("error", err))
			}
		}()
		agentAddr, runtimeAddr, engineAddr := b.Addrs()
		upstreams[0].Address, upstreams[1].Address, upstreams[2].Address = agentAddr, runtimeAddr, engineAddr
	}

	gw, err := server.New(server.Config{
		Agent: upstreams[0], Runtime: upstreams[1], Engine: upstreams[2],
		MaxTimeout:      o.maxTimeout,
		DialTimeout:     o.dialTimeout,
		MaxInFlight:     o.maxInFlight,
		RetryAttempts:   o.retryAttempts,
		RetryBudget:     o.retryBudget,
		ResolveInterval: o.resolveInterval,
		NetHTTPGRPC:     o.netHTTPGRPC,
		NetHTTP1:        o.netHTTP1,
		UpstreamGRPCGo:  o.upstreamGRPCGo,
		TranscodeREST:   o.transcodeREST,
		ForwardHeaders:  o.forwardHeaders,
		SSE:             server.SSEConfig{Heartbeat: o.sseHeartbeat, Retry: o.sseRetry},
		Security:        o.security,
		TLSCertFile:     o.tlsCert,
		TLSKeyFile:      o.tlsKey,
		ShutdownTimeout: o.shutdownTimeout,
		DrainDelay:      o.drainDelay,
		NoMetrics:       !o.metrics,
		NoConsole:       !o.console,
		Version:         version,
		TracerProvider:  tp,
		Logger:          logger,
	})
	if err != nil {
		return err
	}
	defer gw.Close()
	scheme := "http"
	if o.tlsCert != "" {
		scheme = "https"
	}
	mode := "remote backends"
	if embedded {
		mode = "embedded backends"
	}
	logger.Info("flowgate serving",
		slog.String("address", scheme+"://"+ln.Addr().String()),
		slog.String("backends", mode),
		slog.String("agent", upstreams[0].Address),
		slog.String("runtime", upstreams[1].Address),
		slog.String("engine", upstreams[2].Address),
		slog.String("version", version))
	fmt.Fprintf(stdout, "flowgate %s serving on %s://%s with %s (docs at /docs)\n", version, scheme, ln.Addr(), mode)
	return gw.Serve(ctx, ln)
}

// upstreamConfig returns the three upstreams, or says the embedded backends
// must serve them: all three remote or none, since the reference services
// call each other.
func (o *options) upstreamConfig() ([3]server.Upstream, bool, error) {
	var ups [3]server.Upstream
	var remote []string
	for i, u := range o.upstreams {
		if u.port <= 0 || u.port > 65535 {
			return ups, false, fmt.Errorf("workflow %s port %d is out of range", u.name, u.port)
		}
		ups[i].Protocol = u.protocol
		if u.host != "" {
			remote = append(remote, u.name)
			ups[i].Address = upstreamAddress(u.host, u.port)
		}
	}
	switch len(remote) {
	case 0:
		return ups, true, nil
	case 3:
		return ups, false, nil
	default:
		return ups, false, fmt.Errorf("remote backends: set the host of all three services or of none (set: %s)", strings.Join(remote, ", "))
	}
}

// upstreamAddress is the server.Upstream address of a host flag: each of
// its comma-separated hosts, or its dns:/// name, with the port flag's port
// unless it names one.
func upstreamAddress(hosts string, port int) string {
	withPort := func(host string) string {
		host = strings.TrimSpace(host)
		scheme, rest, isURL := strings.Cut(host, "://")
		if !isURL {
			scheme, rest = "", host
		}
		hostPart, path, hasPath := strings.Cut(rest, "/")
		if _, p, err := net.SplitHostPort(hostPart); err == nil && p != "" {
			return host
		}
		out := net.JoinHostPort(strings.Trim(hostPart, "[]"), strconv.Itoa(port))
		if isURL {
			out = scheme + "://" + out
		}
		if hasPath {
			out += "/" + path
		}
		return out
	}
	if name, ok := strings.CutPrefix(hosts, "dns:///"); ok {
		return "dns:///" + withPort(name)
	}
	parts := strings.Split(hosts, ",")
	for i, h := range parts {
		parts[i] = withPort(h)
	}
	return strings.Join(parts, ",")
}

func defaultPublicURL(addr net.Addr, tls bool) string {
	scheme := "http"
	if tls {
		scheme = "https"
	}
	_, port, _ := net.SplitHostPort(addr.String())
	return scheme + "://localhost:" + port
}

// logFlushInterval bounds how long a log line waits to be written.
const logFlushInterval = 100 * time.Millisecond

func newLogger(w io.Writer, format string, debug bool) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	switch format {
	case "json":
		// slog's JSON handler, whose access-log lines the access log writes
		// without slog's per-record work.
		return slog.New(interceptors.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want json or text", format)
}
