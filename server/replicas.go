package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/flowgate/flowgate/internal/apierr"
)

// dnsScheme prefixes an upstream address that names replicas by a DNS name,
// re-resolved every resolve interval: dns:///backend.internal:50052.
const dnsScheme = "dns:///"

// Replica defaults.
const (
	// defaultResolveInterval is how often a dns:/// address is resolved again.
	defaultResolveInterval = 10 * time.Second
	// refusedFor is how long a replica that refused a connection is passed
	// over while others can take calls; after it, one call tries it again.
	refusedFor = time.Second
)

// replicaAddresses splits an upstream address into its replicas' base URLs,
// or returns the host:port of a dns:/// address to resolve.
func (u Upstream) replicaAddresses() (static []*url.URL, dnsTarget string, err error) {
	addr := strings.TrimSpace(u.Address)
	if rest, ok := strings.CutPrefix(addr, dnsScheme); ok {
		host, port, err := net.SplitHostPort(rest)
		if err != nil || host == "" || port == "" || strings.Contains(rest, ",") {
			return nil, "", fmt.Errorf("address %q: want dns:///host:port", u.Address)
		}
		return nil, rest, nil
	}
	for entry := range strings.SplitSeq(addr, ",") {
		base, err := Upstream{Address: entry}.baseURL()
		if err != nil {
			return nil, "", err
		}
		static = append(static, base)
	}
	return static, "", nil
}

// replica is one address of an upstream service: its connection, the
// callers of each method over it, and its own in-flight limit and outlier
// detection.
type replica struct {
	addr    string // host:port, for logs
	guard   *upstreamGuard
	callers []upstreamCaller // by method index
	conn    *grpc.ClientConn // gRPC upstreams
	h2      *h2Client        // cleartext gRPC upstreams' unary calls
	client  *http.Client     // Connect and gRPC-Web upstreams
	health  func(ctx context.Context, service string) (grpchealth.Status, error)
	stop    context.CancelFunc
	// downUntil (unix nanoseconds) passes the replica over while it refuses
	// connections, when another replica can take the call.
	downUntil atomic.Int64
}

// finish records how a call the replica took ended; unary calls were
// admitted and release their in-flight slot.
func (r *replica) finish(ctx context.Context, err error, unary bool) {
	r.finishAt(ctx, err, unary, time.Now())
}

// finishAt is finish for a call that ended at now.
func (r *replica) finishAt(ctx context.Context, err error, unary bool, now time.Time) {
	if unary {
		r.guard.done(ctx, err, now)
	} else {
		r.guard.record(ctx, err, now)
	}
	if err != nil && notSent(err) {
		r.downUntil.Store(now.Add(refusedFor).UnixNano())
	}
}

func (r *replica) close() {
	r.stop()
	if r.conn != nil {
		_ = r.conn.Close()
	}
	if r.h2 != nil {
		r.h2.close()
	}
	if r.client != nil {
		r.client.CloseIdleConnections()
	}
}

// replicaPool is the replicas of one upstream service and the choice among
// them. The set is replaced whole when a DNS name resolves differently, so
// that a call reads it with one atomic load.
type replicaPool struct {
	name     string // "workflow runtime"
	service  string // the service's full name, for health checks
	replicas atomic.Pointer[[]*replica]
	// grpcOnly is whether every replica is called with grpc-go (an
	// upstream's replicas all are, or none), kept with the set.
	grpcOnly atomic.Bool
	next     atomic.Uint32
	budget   retryBudget
	// ejections counts every replica's ejections, those of replicas gone
	// from DNS included.
	ejections atomic.Int64

	// life is the gateway's lifetime, which replicas added later live in.
	life     context.Context //nolint:containedctx // a lifetime, not a request scope
	build    func(ctx context.Context, base *url.URL) (*replica, error)
	lookup   func(ctx context.Context, host string) ([]string, error)
	dns      string // host:port of a dns:/// address
	interval time.Duration
	logger   *slog.Logger

	mu      sync.Mutex
	retired []*replica // removed from DNS, closed with the pool
}

// newReplicaPool builds the pool of one upstream: its listed replicas, or
// those its DNS name resolves to now (a name that does not resolve yet
// leaves the pool empty, calls failing with Unavailable, until it does).
func newReplicaPool(ctx context.Context, p *replicaPool, up Upstream) error {
	static, dnsTarget, err := up.replicaAddresses()
	if err != nil {
		return err
	}
	p.dns = dnsTarget
	p.life = ctx
	if p.interval <= 0 {
		p.interval = defaultResolveInterval
	}
	if p.lookup == nil {
		p.lookup = net.DefaultResolver.LookupHost
	}
	reps := make([]*replica, 0, len(static))
	for _, base := range static {
		r, err := p.build(ctx, base)
		if err != nil {
			closeReplicas(reps)
			return err
		}
		reps = append(reps, r)
	}
	p.setReplicas(reps)
	if p.dns != "" {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		p.resolve(rctx)
		cancel()
	}
	go p.run(ctx)
	return nil
}

// run rotates the retry budget's window, and resolves a DNS name again
// every interval, until ctx ends.
func (p *replicaPool) run(ctx context.Context) {
	tick := time.NewTicker(budgetBucket)
	defer tick.Stop()
	var resolve <-chan time.Time
	if p.dns != "" {
		t := time.NewTicker(p.interval)
		defer t.Stop()
		resolve = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.budget.rotate()
		case <-resolve:
			rctx, cancel := context.WithTimeout(ctx, p.interval)
			p.resolve(rctx)
			cancel()
		}
	}
}

// resolve looks the DNS name up and replaces the replica set when the
// addresses changed. A failed or empty answer keeps the replicas known:
// a DNS outage must not take the backends away. Replicas gone from DNS are
// closed an interval later, so that calls in flight on them can finish.
func (p *replicaPool) resolve(ctx context.Context) {
	host, port, _ := net.SplitHostPort(p.dns)
	ips, err := p.lookup(ctx, host)
	if err != nil || len(ips) == 0 {
		if ctx.Err() == nil || len(*p.replicas.Load()) == 0 {
			p.logger.Warn("upstream address does not resolve; keeping the replicas known", slog.String("upstream", p.name),
				slog.String("address", dnsScheme+p.dns), slog.Any("error", err), slog.Int("replicas", len(*p.replicas.Load())))
		}
		return
	}
	addrs := make([]string, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, net.JoinHostPort(ip, port))
	}
	slices.Sort(addrs)
	addrs = slices.Compact(addrs)
	old := *p.replicas.Load()
	byAddr := make(map[string]*replica, len(old))
	for _, r := range old {
		byAddr[r.addr] = r
	}
	fresh := make([]*replica, 0, len(addrs))
	changed := len(addrs) != len(old)
	for _, a := range addrs {
		if r, ok := byAddr[a]; ok {
			fresh = append(fresh, r)
			delete(byAddr, a)
			continue
		}
		r, err := p.build(p.life, &url.URL{Scheme: "http", Host: a})
		if err != nil {
			p.logger.Error("could not add an upstream replica", slog.String("upstream", p.name), slog.String("replica", a), slog.Any("error", err))
			continue
		}
		fresh = append(fresh, r)
		changed = true
	}
	if !changed || len(fresh) == 0 {
		return
	}
	p.setReplicas(fresh)
	p.logger.Info("upstream replicas changed", slog.String("upstream", p.name), slog.Any("replicas", addrs))
	p.mu.Lock()
	for _, r := range byAddr {
		p.retired = append(p.retired, r)
		time.AfterFunc(p.interval, r.close)
	}
	p.mu.Unlock()
}

// setReplicas replaces the replica set.
func (p *replicaPool) setReplicas(reps []*replica) {
	all := true
	for _, r := range reps {
		all = all && r.conn != nil // only gRPC replicas have a grpc-go connection
	}
	p.grpcOnly.Store(all)
	p.replicas.Store(&reps)
}

// close releases every replica's connections.
func (p *replicaPool) close() {
	closeReplicas(*p.replicas.Load())
	p.mu.Lock()
	closeReplicas(p.retired)
	p.mu.Unlock()
}

func closeReplicas(reps []*replica) {
	for _, r := range reps {
		r.close()
	}
}

// pick chooses the replica of a call and lets it in (admit, for unary
// calls, which count against its in-flight limit; check, for streams).
// One replica is used as it is. Among several, it takes the less busy of
// the next two in turn (round robin with a second choice), passing over
// replicas that are ejected or full, and, while another can take the call,
// replicas that refuse connections and avoid, the one a retried call just
// failed on. The error is the refusal of a call no replica can take.
func (p *replicaPool) pick(avoid *replica, unary bool) (*replica, error) {
	reps := *p.replicas.Load()
	if len(reps) == 1 {
		return reps[0], letIn(reps[0], unary)
	}
	if len(reps) == 0 {
		return nil, apierr.UpstreamRefused(apierr.Public(p.name + " has no replica: its address does not resolve"))
	}
	n := len(reps)
	// A retry does not take a turn: turns taken by retries would pair
	// callers' first attempts with the same replicas.
	var start int
	if avoid == nil {
		start = int(p.next.Add(1))
	} else {
		start = int(p.next.Load())
	}
	now := time.Now().UnixNano()
	var refusal error
	for pass := range 2 {
		var a, b *replica
		for k := range n {
			r := reps[(start+k)%n]
			if r.guard.ejected.Load() || pass == 0 && (r == avoid || r.downUntil.Load() > now) {
				continue
			}
			if a == nil {
				a = r
				continue
			}
			b = r
			break
		}
		if b != nil && b.guard.inFlight.Load() < a.guard.inFlight.Load() {
			a, b = b, a
		}
		for _, r := range [2]*replica{a, b} {
			if r == nil {
				continue
			}
			err := letIn(r, unary)
			if err == nil {
				return r, nil
			}
			refusal = err
		}
	}
	if refusal == nil {
		// Every replica is ejected.
		refusal = reps[start%n].guard.check()
	}
	return nil, refusal
}

func letIn(r *replica, unary bool) error {
	if unary {
		return r.guard.admit()
	}
	return r.guard.check()
}

// alone reports whether the pool has one replica: a call then waits for a
// refused connection to be redialled rather than fail (see grpcCaller).
func (p *replicaPool) alone() bool { return len(*p.replicas.Load()) <= 1 }

// healthStatus is the health of the service behind the pool: serving when
// any replica serves it.
func (p *replicaPool) healthStatus(ctx context.Context) grpchealth.Status {
	reps := *p.replicas.Load()
	results := make(chan grpchealth.Status, len(reps))
	for _, r := range reps {
		go func() {
			status, err := r.health(ctx, p.service)
			if err != nil {
				status = grpchealth.StatusNotServing
			}
			results <- status
		}()
	}
	best := grpchealth.StatusNotServing
	for range reps {
		if s := <-results; s == grpchealth.StatusServing {
			best = s
		}
	}
	return best
}

// inFlight, ejected and size are read when metrics are scraped.
func (p *replicaPool) inFlight() (n int64) {
	for _, r := range *p.replicas.Load() {
		n += r.guard.inFlight.Load()
	}
	return n
}

func (p *replicaPool) ejected() (n int) {
	for _, r := range *p.replicas.Load() {
		if r.guard.ejected.Load() {
			n++
		}
	}
	return n
}

func (p *replicaPool) size() int { return len(*p.replicas.Load()) }

// ownClientCalls is the unary calls the replicas' own HTTP/2 clients sent,
// and those they left to grpc-go's.
func (p *replicaPool) ownClientCalls() (sent, left int64) {
	for _, r := range *p.replicas.Load() {
		if r.h2 != nil {
			sent += r.h2.sent.Load()
			left += r.h2.left.Load()
		}
	}
	return sent, left
}

// grpcHealth checks a gRPC replica's health over the connection calls use.
func grpcHealth(conn *grpc.ClientConn) func(context.Context, string) (grpchealth.Status, error) {
	return func(ctx context.Context, service string) (grpchealth.Status, error) {
		res := new(healthpb.HealthCheckResponse)
		if err := conn.Invoke(ctx, healthpb.Health_Check_FullMethodName, &healthpb.HealthCheckRequest{Service: service}, res); err != nil {
			return grpchealth.StatusUnknown, err
		}
		return grpchealth.Status(res.GetStatus()), nil //nolint:gosec // the same enumeration
	}
}

// connectHealth is grpcHealth for Connect and gRPC-Web replicas.
func connectHealth(client *grpchealth.Client) func(context.Context, string) (grpchealth.Status, error) {
	return func(ctx context.Context, service string) (grpchealth.Status, error) {
		res, err := client.Check(ctx, &grpchealth.CheckRequest{Service: service})
		if err != nil {
			return grpchealth.StatusUnknown, err
		}
		return res.Status, nil
	}
}

// replicaBuilder returns how the gateway connects to one replica of an
// upstream service: a grpc-go connection for gRPC upstreams without a path
// prefix, connect-go clients over net/http otherwise.
func (g *Gateway) replicaBuilder(p *replicaPool, desc protoreflect.ServiceDescriptor, up Upstream) func(context.Context, *url.URL) (*replica, error) {
	return func(ctx context.Context, base *url.URL) (*replica, error) {
		clientOpts, err := up.clientOptions()
		if err != nil {
			return nil, err
		}
		methods := desc.Methods()
		r := &replica{addr: base.Host, callers: make([]upstreamCaller, methods.Len())}
		var probe func(context.Context) error
		if up.speaksGRPC() && base.Path == "" {
			if r.conn, err = dialGRPC(base, g.cfg.DialTimeout, g.security.maxMessageBytes()); err != nil {
				return nil, err
			}
			shared := &grpcUpstream{conn: r.conn, alone: p.alone}
			if base.Scheme == "http" && !g.cfg.UpstreamGRPCGo {
				r.h2 = newH2Client(base.Host, g.cfg.DialTimeout, g.security.maxMessageBytes())
				shared.h2 = r.h2
			}
			for i := range methods.Len() {
				r.callers[i] = grpcCaller{grpcUpstream: shared, procedure: procedureOf(desc, methods.Get(i))}
			}
			probe = grpcProbe(shared, p.service)
			r.health = grpcHealth(r.conn)
		} else {
			r.client = newUpstreamClient(base, g.cfg.DialTimeout)
			for i := range methods.Len() {
				procedure := procedureOf(desc, methods.Get(i))
				r.callers[i] = connectCaller{connect.NewClient[frame, frame](r.client, base.String()+procedure, append(clientOpts, connect.WithSchema(methods.Get(i)))...)}
			}
			health := grpchealth.NewClient(r.client, base.String(), clientOpts[1:]...)
			probe = connectProbe(health, p.service)
			r.health = connectHealth(health)
		}
		r.guard = newUpstreamGuard(p.name, g.cfg.MaxInFlight, probe, g.logger.With(slog.String("replica", r.addr)))
		r.guard.ejectionsTotal = &p.ejections
		gctx, stop := context.WithCancel(ctx)
		r.stop = stop
		go r.guard.run(gctx)
		return r, nil
	}
}

func procedureOf(desc protoreflect.ServiceDescriptor, method protoreflect.MethodDescriptor) string {
	return "/" + string(desc.FullName()) + "/" + string(method.Name())
}
