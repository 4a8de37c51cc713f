package validate

import (
	"bytes"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const composeFile = "../../compose.yaml"

// composeService is the part of the Compose specification compose.yaml
// uses; decoding is strict, so a misspelt key fails.
type composeService struct {
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Image       string            `yaml:"image"`
	ReadOnly    bool              `yaml:"read_only"`
	Tmpfs       []string          `yaml:"tmpfs"`
	Restart     string            `yaml:"restart"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Expose      []string          `yaml:"expose"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test     []string `yaml:"test"`
		Interval string   `yaml:"interval"`
		Timeout  string   `yaml:"timeout"`
		Retries  int      `yaml:"retries"`
	} `yaml:"healthcheck"`
	Deploy *struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
}

// interpolation is Compose's ${NAME}, ${NAME:-default} and ${NAME-default},
// taken with NAME unset, as on a machine with no .env.
var interpolation = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)(?::?-([^}]*))?\}`)

func readCompose(t *testing.T) (map[string]*composeService, map[string]bool) {
	t.Helper()
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	raw = interpolation.ReplaceAll(raw, []byte("$2"))
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(raw, &top); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for key := range top {
		if !strings.HasPrefix(key, "x-") && !slices.Contains([]string{"name", "services", "volumes", "networks", "configs", "secrets"}, key) {
			t.Errorf("compose.yaml: unknown top-level key %q", key)
		}
	}
	services := map[string]*composeService{}
	var nodes map[string]yaml.Node
	if n, ok := top["services"]; !ok {
		t.Fatal("compose.yaml: no services")
	} else if err := n.Decode(&nodes); err != nil {
		t.Fatal(err)
	}
	for name, n := range nodes {
		// Decode again through bytes to apply strictness after the merge
		// keys (<<: *anchor) are resolved.
		var merged map[string]any
		if err := n.Decode(&merged); err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		out, _ := yaml.Marshal(merged)
		dec := yaml.NewDecoder(bytes.NewReader(out))
		dec.KnownFields(true)
		s := &composeService{}
		if err := dec.Decode(s); err != nil {
			t.Errorf("service %s: %v", name, err)
		}
		services[name] = s
	}
	volumes := map[string]bool{}
	if n, ok := top["volumes"]; ok {
		var vs map[string]any
		if err := n.Decode(&vs); err != nil {
			t.Fatal(err)
		}
		for v := range vs {
			volumes[v] = true
		}
	}
	return services, volumes
}

// TestCompose checks compose.yaml against the Dockerfile, the binaries
// and the configuration files it mounts: two gateways and two backend
// replicas built from this checkout, PostgreSQL, Redis, an OpenTelemetry
// collector and Prometheus, each reference resolving.
func TestCompose(t *testing.T) {
	services, volumes := readCompose(t)
	d := readDockerfile(t)
	for _, name := range []string{"postgres", "redis", "otel-collector", "prometheus"} {
		if services[name] == nil {
			t.Errorf("no service %s", name)
		}
	}
	// Which services run which binary, and what they listen on.
	runs := map[string]*binary{}
	listens := map[string][]int{}
	envs := map[string]map[string]string{}
	gateways, backendReplicas := 0, 0
	for name, s := range services {
		for dep, cond := range s.DependsOn {
			target := services[dep]
			switch {
			case target == nil:
				t.Errorf("%s depends on %s, which is no service", name, dep)
			case cond.Condition == "service_healthy" && target.Healthcheck == nil:
				t.Errorf("%s waits for %s to be healthy, which has no health check", name, dep)
			case !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, cond.Condition):
				t.Errorf("%s depends on %s with condition %q", name, dep, cond.Condition)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			switch {
			case strings.HasPrefix(src, "."):
				if _, err := os.Stat(filepath.Join(filepath.Dir(composeFile), src)); err != nil {
					t.Errorf("%s mounts %s: %v", name, src, err)
				}
			case !volumes[src]:
				t.Errorf("%s mounts volume %s, which is not declared", name, src)
			}
		}
		if s.Build == nil {
			if s.Image == "" || !strings.Contains(s.Image, ":") {
				t.Errorf("%s: image %q without a tag", name, s.Image)
			}
			continue
		}
		where := "compose service " + name
		dockerfile := filepath.Join(filepath.Dir(composeFile), s.Build.Context, s.Build.Dockerfile)
		if abs, _ := filepath.Abs(dockerfile); abs != mustAbs(t, filepath.Join(root, "Dockerfile")) {
			t.Errorf("%s is built from %s, not the repository's Dockerfile", name, dockerfile)
		}
		if !s.ReadOnly {
			t.Errorf("%s: want read_only", name)
		}
		bin := binaryFor(t, d, where, s.Entrypoint)
		if bin == nil {
			continue
		}
		bin.check(t, where, s.Command, s.Environment)
		runs[name], envs[name] = bin, s.Environment
		for p := range listenPorts(t, where, bin, s.Environment) {
			listens[name] = append(listens[name], int(p))
		}
		replicas := 1
		if s.Deploy != nil && s.Deploy.Replicas > 0 {
			replicas = s.Deploy.Replicas
		}
		if bin.name == "flowgate" {
			gateways += replicas
			for _, p := range s.Ports {
				container := p[strings.LastIndex(p, ":")+1:]
				if n, err := strconv.Atoi(container); err != nil || !slices.Contains(listens[name], n) {
					t.Errorf("%s publishes %s, but the gateway listens on %v", name, p, listens[name])
				}
			}
		} else {
			backendReplicas += replicas
		}
	}
	if gateways != 2 || backendReplicas != 2 {
		t.Errorf("%d gateways and %d backend replicas, want 2 and 2", gateways, backendReplicas)
	}
	dials := func(where, rawURL string) (string, int) {
		u, err := url.Parse(rawURL)
		if err != nil || u.Hostname() == "" {
			t.Errorf("%s: %q is not a URL", where, rawURL)
			return "", 0
		}
		port, _ := strconv.Atoi(u.Port())
		if services[u.Hostname()] == nil {
			t.Errorf("%s: %s is no service", where, u.Hostname())
		}
		return u.Hostname(), port
	}
	collector := readCollector(t, services["otel-collector"])
	for name, bin := range runs {
		env := envs[name]
		where := "compose service " + name
		if bin.name == "flowgate" {
			for _, up := range []string{"AGENT", "RUNTIME", "ENGINE"} {
				host := env["WORKFLOW_"+up+"_HOST"]
				// dns:///name: every address of the name, re-resolved (a headless Service,
				// or compose's replicas of one service).
				host = strings.TrimPrefix(host, "dns:///")
				port, err := strconv.Atoi(env["WORKFLOW_"+up+"_PORT"])
				if err != nil {
					port = map[string]int{"AGENT": 50051, "RUNTIME": 50052, "ENGINE": 50053}[up]
				}
				if runs[host] == nil || runs[host].name != "flowgate-backends" || !slices.Contains(listens[host], port) {
					t.Errorf("%s dials the %s at %s:%d, where no backend listens", where, strings.ToLower(up), host, port)
				}
			}
			if v, ok := env["REDIS_URL"]; ok {
				if host, _ := dials(where, v); host != "" && !strings.HasPrefix(services[host].Image, "redis") {
					t.Errorf("%s: REDIS_URL names %s, which is not Redis", where, host)
				}
			}
		}
		if v, ok := env["DATABASE_URL"]; ok {
			host, _ := dials(where, v)
			if pg := services[host]; pg != nil {
				u, _ := url.Parse(v)
				pass, _ := u.User.Password()
				if u.User.Username() != pg.Environment["POSTGRES_USER"] || pass != pg.Environment["POSTGRES_PASSWORD"] ||
					strings.TrimPrefix(u.Path, "/") != pg.Environment["POSTGRES_DB"] {
					t.Errorf("%s: DATABASE_URL does not match the user, password and database of %s", where, host)
				}
			}
		}
		if v, ok := env["OTEL_EXPORTER_OTLP_ENDPOINT"]; ok {
			host, port := dials(where, v)
			if host != "otel-collector" || port != collector.httpPort {
				t.Errorf("%s exports spans to %s:%d; the collector takes OTLP/HTTP on otel-collector:%d", where, host, port, collector.httpPort)
			}
		}
	}
	checkPrometheus(t, services, runs, listens, collector)
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// configFile reads the host file that a service's first argument (flag
// followed by a path in the container) names, through the service's mounts.
func configFile(t *testing.T, name string, s *composeService, flag string) []byte {
	t.Helper()
	if s == nil || len(s.Command) == 0 {
		t.Fatalf("the %s service has no command naming its configuration", name)
	}
	target, ok := strings.CutPrefix(s.Command[0], flag)
	if !ok {
		t.Fatalf("%s command %v: want %s<file>", name, s.Command, flag)
	}
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			raw, err := os.ReadFile(filepath.Join(filepath.Dir(composeFile), parts[0]))
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}
	}
	t.Fatalf("%s: nothing is mounted at %s", name, target)
	return nil
}

type collectorConfig struct {
	httpPort, metricsPort int
}

func endpointPort(t *testing.T, what, endpoint string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(endpoint)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Errorf("%s: endpoint %q", what, endpoint)
	}
	return n
}

// readCollector checks the collector's configuration: a traces pipeline
// from the OTLP receiver through components that are defined.
func readCollector(t *testing.T, s *composeService) collectorConfig {
	t.Helper()
	raw := configFile(t, "otel-collector", s, "--config=")
	var cfg struct {
		Receivers struct {
			OTLP struct {
				Protocols struct {
					GRPC struct{ Endpoint string }
					HTTP struct{ Endpoint string }
				}
			}
		}
		Processors map[string]any
		Exporters  map[string]any
		Service    struct {
			Pipelines map[string]struct {
				Receivers, Processors, Exporters []string
			}
			Telemetry struct {
				Metrics struct{ Address string }
			}
		}
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("collector configuration: %v", err)
	}
	traces, ok := cfg.Service.Pipelines["traces"]
	if !ok || !slices.Contains(traces.Receivers, "otlp") || len(traces.Exporters) == 0 {
		t.Errorf("collector: no traces pipeline from the otlp receiver: %+v", cfg.Service.Pipelines)
	}
	for _, p := range traces.Processors {
		if _, ok := cfg.Processors[p]; !ok {
			t.Errorf("collector: processor %s is not defined", p)
		}
	}
	for _, e := range traces.Exporters {
		if _, ok := cfg.Exporters[e]; !ok {
			t.Errorf("collector: exporter %s is not defined", e)
		}
	}
	return collectorConfig{
		httpPort:    endpointPort(t, "collector otlp http", cfg.Receivers.OTLP.Protocols.HTTP.Endpoint),
		metricsPort: endpointPort(t, "collector telemetry", cfg.Service.Telemetry.Metrics.Address),
	}
}

// checkPrometheus checks that every gateway replica is scraped where it
// serves /metrics, and that every target is a service and port.
func checkPrometheus(t *testing.T, services map[string]*composeService, runs map[string]*binary, listens map[string][]int, collector collectorConfig) {
	t.Helper()
	raw := configFile(t, "prometheus", services["prometheus"], "--config.file=")
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatalf("prometheus configuration: %v", err)
	}
	scraped := map[string]bool{}
	for _, job := range cfg.ScrapeConfigs {
		if job.MetricsPath != "" && job.MetricsPath != "/metrics" {
			t.Errorf("prometheus job %s scrapes %s", job.JobName, job.MetricsPath)
		}
		for _, sc := range job.StaticConfigs {
			for _, target := range sc.Targets {
				host, p, err := net.SplitHostPort(target)
				port, _ := strconv.Atoi(p)
				switch {
				case err != nil || services[host] == nil:
					t.Errorf("prometheus target %s is no service", target)
				case host == "otel-collector":
					if port != collector.metricsPort {
						t.Errorf("prometheus target %s: the collector serves its metrics on %d", target, collector.metricsPort)
					}
				case runs[host] == nil || runs[host].name != "flowgate" || !slices.Contains(listens[host], port):
					t.Errorf("prometheus target %s is not a gateway's port", target)
				default:
					scraped[host] = true
				}
			}
		}
	}
	for name, bin := range runs {
		if bin.name == "flowgate" && !scraped[name] {
			t.Errorf("gateway %s is not scraped", name)
		}
	}
}
