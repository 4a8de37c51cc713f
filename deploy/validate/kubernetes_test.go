package validate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// objects is one kustomization's output, decoded into the Kubernetes API
// types.
type objects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	accounts    map[string]bool
	pdbs        []*policyv1.PodDisruptionBudget
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
}

// build runs kustomize on dir and decodes every object strictly: an
// unknown or misspelt field, a wrong type or an unparsable quantity fails,
// as the API server's validation would refuse it.
func build(t *testing.T, dir string) *objects {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	o := &objects{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, accounts: map[string]bool{}}
	for _, r := range m.Resources() {
		raw, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetApiVersion() + " " + r.GetKind()
		where := fmt.Sprintf("%s: %s %s", dir, r.GetKind(), r.GetName())
		var obj any
		switch gvk {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			o.deployments, obj = append(o.deployments, d), d
		case "v1 Service":
			s := &corev1.Service{}
			o.services, obj = append(o.services, s), s
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			o.configMaps[r.GetName()], obj = c, c
		case "v1 Secret":
			s := &corev1.Secret{}
			o.secrets[r.GetName()], obj = s, s
		case "v1 ServiceAccount":
			o.accounts[r.GetName()], obj = true, &corev1.ServiceAccount{}
		case "v1 Namespace":
			obj = &corev1.Namespace{}
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			o.pdbs, obj = append(o.pdbs, p), p
		case "autoscaling/v2 HorizontalPodAutoscaler":
			h := &autoscalingv2.HorizontalPodAutoscaler{}
			o.hpas, obj = append(o.hpas, h), h
		default:
			t.Errorf("%s: unexpected kind %s", where, gvk)
			continue
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			t.Errorf("%s: %v", where, err)
		}
		for _, msg := range validation.IsDNS1123Subdomain(r.GetName()) {
			t.Errorf("%s: name: %s", where, msg)
		}
	}
	return o
}

// TestBaseBuilds checks that the base alone builds and decodes; it leaves
// the Secret and the namespace to an overlay.
func TestBaseBuilds(t *testing.T) {
	o := build(t, "../kubernetes/base")
	if len(o.deployments) != 2 || len(o.services) != 2 || len(o.pdbs) != 2 || len(o.hpas) != 2 || len(o.configMaps) != 2 {
		t.Fatalf("base: %d deployments, %d services, %d budgets, %d autoscalers, %d config maps",
			len(o.deployments), len(o.services), len(o.pdbs), len(o.hpas), len(o.configMaps))
	}
	if len(o.secrets) != 0 {
		t.Error("base: secrets belong in an overlay")
	}
}

// TestExampleOverlay checks a complete installation: references between
// objects resolve, pods are locked down, probes point at ports and paths
// the binaries serve, and every container's configuration is accepted by
// the binary it runs.
func TestExampleOverlay(t *testing.T) {
	o := build(t, "../kubernetes/overlays/example")
	d := readDockerfile(t)
	byName := map[string]*appsv1.Deployment{}
	for _, dep := range o.deployments {
		byName[dep.Name] = dep
		checkDeployment(t, o, d, dep)
	}
	for _, want := range []string{"flowgate-gateway", "flowgate-backends"} {
		if byName[want] == nil {
			t.Fatalf("no Deployment %s", want)
		}
	}
	for _, svc := range o.services {
		checkService(t, o, svc)
	}
	checkUpstreams(t, o, byName["flowgate-gateway"])
	for _, pdb := range o.pdbs {
		if n := len(selected(t, o, pdb.Spec.Selector)); n != 1 {
			t.Errorf("PodDisruptionBudget %s selects %d Deployments", pdb.Name, n)
		}
	}
	scaled := map[string]bool{}
	for _, h := range o.hpas {
		ref := h.Spec.ScaleTargetRef
		dep := byName[ref.Name]
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || dep == nil {
			t.Errorf("HorizontalPodAutoscaler %s scales %s %s %s, not a Deployment here", h.Name, ref.APIVersion, ref.Kind, ref.Name)
			continue
		}
		scaled[dep.Name] = true
		cpu := false
		for _, m := range h.Spec.Metrics {
			cpu = cpu || (m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU)
		}
		if !cpu {
			t.Errorf("HorizontalPodAutoscaler %s does not scale on CPU", h.Name)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			t.Errorf("HorizontalPodAutoscaler %s: replicas %v..%d; want at least 2 so that a disruption budget can hold", h.Name, h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		if dep.Spec.Replicas != nil {
			t.Errorf("Deployment %s sets replicas, which fights its autoscaler on every apply", dep.Name)
		}
	}
	for name := range byName {
		if !scaled[name] {
			t.Errorf("Deployment %s has no autoscaler", name)
		}
	}
	for name, s := range o.secrets {
		checkSecret(t, name, s)
	}
}

func selected(t *testing.T, o *objects, sel *metav1.LabelSelector) []*appsv1.Deployment {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || s.Empty() {
		t.Errorf("selector %v: %v (empty: selects everything)", sel, err)
		return nil
	}
	var out []*appsv1.Deployment
	for _, d := range o.deployments {
		if s.Matches(labels.Set(d.Spec.Template.Labels)) {
			out = append(out, d)
		}
	}
	return out
}

func checkDeployment(t *testing.T, o *objects, d dockerfile, dep *appsv1.Deployment) {
	t.Helper()
	if got := selected(t, o, dep.Spec.Selector); len(got) != 1 || got[0] != dep {
		t.Errorf("Deployment %s: its selector does not select exactly its own pods", dep.Name)
	}
	pod := dep.Spec.Template.Spec
	if sa := pod.ServiceAccountName; sa != "" && !o.accounts[sa] {
		t.Errorf("Deployment %s: no ServiceAccount %s", dep.Name, sa)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("Deployment %s: pods may run as root", dep.Name)
	}
	for _, v := range pod.Volumes {
		switch {
		case v.ConfigMap != nil && o.configMaps[v.ConfigMap.Name] == nil && !isOptional(v.ConfigMap.Optional):
			t.Errorf("Deployment %s: volume %s: no ConfigMap %s", dep.Name, v.Name, v.ConfigMap.Name)
		case v.Secret != nil && o.secrets[v.Secret.SecretName] == nil && !isOptional(v.Secret.Optional):
			t.Errorf("Deployment %s: volume %s: no Secret %s", dep.Name, v.Name, v.Secret.SecretName)
		}
	}
	for _, c := range pod.Containers {
		where := fmt.Sprintf("Deployment %s container %s", dep.Name, c.Name)
		checkContainer(t, where, c, pod.TerminationGracePeriodSeconds)
		bin := binaryFor(t, d, where, c.Command)
		if bin == nil {
			continue
		}
		env := containerEnv(t, o, where, c)
		bin.check(t, where, c.Args, env)
		checkPorts(t, where, bin, c, env)
	}
}

func isOptional(b *bool) bool { return b != nil && *b }

func checkContainer(t *testing.T, where string, c corev1.Container, grace *int64) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		if !okReq || !okLim || req.Cmp(lim) > 0 {
			t.Errorf("%s: %s request %v and limit %v: want both, request at most the limit", where, r, req.String(), lim.String())
		}
	}
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Errorf("%s: needs liveness and readiness probes", where)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("%s: want no privilege escalation, a read-only root file system and all capabilities dropped", where)
	}
	if c.Image == "" || !strings.Contains(c.Image, ":") {
		t.Errorf("%s: image %q has no tag", where, c.Image)
	}
	if grace == nil {
		t.Errorf("%s: no terminationGracePeriodSeconds", where)
	}
}

// containerEnv is the environment the container starts with.
func containerEnv(t *testing.T, o *objects, where string, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, src := range c.EnvFrom {
		switch {
		case src.ConfigMapRef != nil:
			cm := o.configMaps[src.ConfigMapRef.Name]
			if cm == nil {
				t.Errorf("%s: no ConfigMap %s", where, src.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[src.Prefix+k] = v
			}
		case src.SecretRef != nil:
			s := o.secrets[src.SecretRef.Name]
			if s == nil {
				t.Errorf("%s: no Secret %s", where, src.SecretRef.Name)
				continue
			}
			for k := range s.Data {
				env[src.Prefix+k] = string(s.Data[k])
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s := o.secrets[ref.Name]
			v, ok := []byte(nil), false
			if s != nil {
				v, ok = s.Data[ref.Key]
			}
			if !ok {
				t.Errorf("%s: %s: no key %s in Secret %s", where, e.Name, ref.Key, ref.Name)
			}
			env[e.Name] = string(v)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm := o.configMaps[ref.Name]
			if cm == nil || cm.Data[ref.Key] == "" {
				t.Errorf("%s: %s: no key %s in ConfigMap %s", where, e.Name, ref.Key, ref.Name)
				continue
			}
			env[e.Name] = cm.Data[ref.Key]
		default:
			t.Errorf("%s: %s: unexpected source", where, e.Name)
		}
	}
	return env
}

// checkPorts matches the container's ports with what the binary listens
// on, and the probes with those ports and with what is served there.
func checkPorts(t *testing.T, where string, bin *binary, c corev1.Container, env map[string]string) {
	t.Helper()
	want := listenPorts(t, where, bin, env)
	declared := map[string]int32{}
	for _, p := range c.Ports {
		if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
			t.Errorf("%s: port name %q: %v", where, p.Name, msgs)
		}
		declared[p.Name] = p.ContainerPort
		if _, ok := want[p.ContainerPort]; !ok {
			t.Errorf("%s: declares port %d, but %s listens on %v", where, p.ContainerPort, bin.name, want)
		}
	}
	resolve := func(p intstr.IntOrString) int32 {
		if p.Type == intstr.String {
			n, ok := declared[p.StrVal]
			if !ok {
				t.Errorf("%s: a probe names port %q, which the container does not declare", where, p.StrVal)
			}
			return n
		}
		return p.IntVal
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if probe == nil {
			continue
		}
		h := probe.ProbeHandler
		var port int32
		switch {
		case h.HTTPGet != nil:
			port = resolve(h.HTTPGet.Port)
			if want[port] != "http" {
				t.Errorf("%s: HTTP probe on port %d, where %s serves %q", where, port, bin.name, want[port])
			}
			checkServes(t, where, bin, "http", h.HTTPGet.Path)
		case h.GRPC != nil:
			port = h.GRPC.Port
			if want[port] != "grpc" {
				t.Errorf("%s: gRPC probe on port %d, where %s serves %q", where, port, bin.name, want[port])
			}
			service := ""
			if h.GRPC.Service != nil {
				service = *h.GRPC.Service
			}
			checkServes(t, where, bin, "grpc", service)
		case h.TCPSocket != nil:
			port = resolve(h.TCPSocket.Port)
			if _, ok := want[port]; !ok {
				t.Errorf("%s: TCP probe on port %d, where %s does not listen", where, port, bin.name)
			}
		default:
			t.Errorf("%s: a probe without a handler", where)
		}
	}
}

// listenPorts are the ports the binary listens on with env, by protocol.
func listenPorts(t *testing.T, where string, bin *binary, env map[string]string) map[int32]string {
	t.Helper()
	port := func(name string, def int) int32 {
		v, ok := env[name]
		if !ok {
			return int32(def)
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Errorf("%s: %s=%q", where, name, v)
		}
		return int32(n)
	}
	if bin.name == "flowgate-backends" {
		return map[int32]string{
			port("WORKFLOW_AGENT_PORT", 50051): "grpc", port("WORKFLOW_RUNTIME_PORT", 50052): "grpc", port("WORKFLOW_ENGINE_PORT", 50053): "grpc",
		}
	}
	listen := env["FLOWGATE_LISTEN"]
	if listen == "" {
		listen = ":8080"
	}
	_, p, err := net.SplitHostPort(listen)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Errorf("%s: FLOWGATE_LISTEN=%q", where, listen)
	}
	return map[int32]string{int32(n): "http"}
}

// served caches, per binary, which probe paths (http) and health service
// names (grpc) a running instance answers with success.
var served = map[string]map[string]bool{}

// checkServes starts the binary once on loopback ports (with SQLite in a
// temporary directory) and asks it what the probe would.
func checkServes(t *testing.T, where string, bin *binary, kind, target string) {
	t.Helper()
	key := kind + " " + target
	cache := served[bin.name]
	if cache == nil {
		cache = map[string]bool{}
		served[bin.name] = cache
	}
	ok, seen := cache[key]
	if !seen {
		ok = probe(t, bin, kind, target)
		cache[key] = ok
	}
	if !ok {
		t.Errorf("%s: %s does not answer the %s probe %q with success", where, bin.name, kind, target)
	}
}

func probe(t *testing.T, bin *binary, kind, target string) bool {
	t.Helper()
	key := strings.Repeat("k", 32)
	args := []string{"-data-dir", t.TempDir(), "-backend-key", key}
	if bin.name == "flowgate" {
		args = append(args, "-listen", "127.0.0.1:0")
	} else {
		args = append(args, "-agent-port", "0", "-runtime-port", "0", "-engine-port", "0")
	}
	cmd := exec.Command(bin.path, args...)
	cmd.Env = []string{}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	line, err := readLine(stdout, 30*time.Second)
	if err != nil {
		t.Fatalf("%s did not start: %v", bin.name, err)
	}
	addrs := regexp.MustCompile(`\b127\.0\.0\.1:\d+\b`).FindAllString(line, -1)
	if len(addrs) == 0 {
		t.Fatalf("%s: no address in %q", bin.name, line)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	if kind == "http" {
		res, err := client.Get((&url.URL{Scheme: "http", Host: addrs[0], Path: target}).String())
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		return res.StatusCode == http.StatusOK
	}
	// Every backend port serves grpc.health.v1.Health; ask the runtime's
	// (the second address) in the Connect protocol, which the same handler
	// serves as gRPC.
	body, _ := json.Marshal(map[string]string{"service": target})
	res, err := client.Post("http://"+addrs[min(1, len(addrs)-1)]+"/grpc.health.v1.Health/Check", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var doc struct{ Status string }
	_ = json.NewDecoder(res.Body).Decode(&doc)
	return res.StatusCode == http.StatusOK && doc.Status == "SERVING_STATUS_SERVING"
}

func readLine(r io.Reader, timeout time.Duration) (string, error) {
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line == "" {
			return "", io.ErrUnexpectedEOF
		}
		return line, nil
	case <-time.After(timeout):
		return "", os.ErrDeadlineExceeded
	}
}

func checkService(t *testing.T, o *objects, svc *corev1.Service) {
	t.Helper()
	deps := selected(t, o, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
	if len(deps) != 1 {
		t.Errorf("Service %s selects %d Deployments", svc.Name, len(deps))
		return
	}
	for _, msg := range validation.IsDNS1035Label(svc.Name) {
		t.Errorf("Service %s: name: %s", svc.Name, msg)
	}
	c := deps[0].Spec.Template.Spec.Containers[0]
	for _, p := range svc.Spec.Ports {
		found := false
		for _, cp := range c.Ports {
			found = found || (p.TargetPort.Type == intstr.String && cp.Name == p.TargetPort.StrVal) ||
				(p.TargetPort.Type == intstr.Int && cp.ContainerPort == p.TargetPort.IntVal)
		}
		if !found {
			t.Errorf("Service %s port %s: target %s is no port of %s", svc.Name, p.Name, p.TargetPort.String(), deps[0].Name)
		}
	}
}

// checkUpstreams checks that WORKFLOW_*_HOST and WORKFLOW_*_PORT of the
// gateway name a Service port.
func checkUpstreams(t *testing.T, o *objects, gw *appsv1.Deployment) {
	t.Helper()
	env := containerEnv(t, o, "gateway", gw.Spec.Template.Spec.Containers[0])
	for _, up := range []string{"AGENT", "RUNTIME", "ENGINE"} {
		host, port := env["WORKFLOW_"+up+"_HOST"], env["WORKFLOW_"+up+"_PORT"]
		// dns:///name: every address of the name, re-resolved (a headless Service,
		// or compose's replicas of one service).
		host = strings.TrimPrefix(host, "dns:///")
		ok := false
		for _, svc := range o.services {
			for _, p := range svc.Spec.Ports {
				ok = ok || (svc.Name == host && strconv.Itoa(int(p.Port)) == port)
			}
		}
		if !ok {
			t.Errorf("the gateway dials %s:%s for the %s, which is no Service port", host, port, strings.ToLower(up))
		}
	}
}

// checkSecret checks the formats the binaries require of the secrets.
func checkSecret(t *testing.T, name string, s *corev1.Secret) {
	t.Helper()
	for _, k := range []string{"backend-key", "jwt-secret"} {
		if v, ok := s.Data[k]; ok && len(v) < 32 {
			t.Errorf("Secret %s: %s is %d bytes; the binaries require at least 32", name, k, len(v))
		}
	}
	if v, ok := s.Data["database-url"]; ok {
		if u, err := url.Parse(string(v)); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			t.Errorf("Secret %s: database-url is not a postgres:// URL", name)
		}
	}
	if v, ok := s.Data["redis-url"]; ok {
		if u, err := url.Parse(string(v)); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			t.Errorf("Secret %s: redis-url is not a redis:// URL", name)
		}
	}
}
