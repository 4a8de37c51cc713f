package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

const maxFailureURLLen = 2048

// ListDeploymentVersions pages through the definitions a deployment has
// had, newest first.
func (s *Service) ListDeploymentVersions(ctx context.Context, req *connect.Request[runtimev1.ListDeploymentVersionsRequest]) (*connect.Response[runtimev1.ListDeploymentVersionsResponse], error) {
	msg := req.Msg
	pg, err := parsePaging(msg.GetPage(), msg.GetPageSize(), "", "")
	if err != nil {
		return nil, err
	}
	d, err := s.repo.getDeployment(ctx, tenantOf(req.Header()), msg.GetDeploymentId())
	if err != nil {
		return nil, s.lookupError(ctx, "deployment", msg.GetDeploymentId(), err)
	}
	versions, err := s.repo.listVersions(ctx, d.id, pg)
	if err != nil {
		return nil, s.internal(ctx, "list deployment versions", err)
	}
	return connect.NewResponse(&runtimev1.ListDeploymentVersionsResponse{
		Versions: versions, TotalCount: d.version, Page: pg.page, PageSize: pg.size,
	}), nil
}

func insertVersion(ctx context.Context, tx *store.Tx, d *deployment, def []byte) error {
	_, err := tx.Exec(ctx, `INSERT INTO deployment_versions (deployment_id, version, definition, created_at) VALUES (?, ?, ?, ?)`,
		d.id, d.version, def, d.updatedAt.UnixMicro())
	if err != nil {
		return fmt.Errorf("insert deployment version: %w", err)
	}
	return nil
}

// listVersions reads one page of versions. Versions are dense from 1, so
// the page is a range of version numbers.
func (r *repo) listVersions(ctx context.Context, deploymentID string, pg paging) ([]*runtimev1.DeploymentVersion, error) {
	rows, err := r.db.Query(ctx, `SELECT version, definition, created_at FROM deployment_versions
		WHERE deployment_id = ? ORDER BY version DESC LIMIT ? OFFSET ?`, deploymentID, pg.size, pg.offset())
	if err != nil {
		return nil, fmt.Errorf("list deployment versions: %w", err)
	}
	defer rows.Close()
	var out []*runtimev1.DeploymentVersion
	for rows.Next() {
		var (
			v       runtimev1.DeploymentVersion
			def     []byte
			created int64
		)
		if err := rows.Scan(&v.Version, &def, &created); err != nil {
			return nil, fmt.Errorf("scan deployment version: %w", err)
		}
		v.WorkflowDefinition = &enginev1.WorkflowDefinition{}
		if err := proto.Unmarshal(def, v.WorkflowDefinition); err != nil {
			return nil, fmt.Errorf("decode version %d of %s: %w", v.Version, deploymentID, err)
		}
		v.CreatedAt = timestamppb.New(time.UnixMicro(created))
		out = append(out, &v)
	}
	return out, rows.Err()
}

// setRunOptions checks the run timeout's form and the failure notification
// and sets them on d; checkRunTimeout later holds the timeout against the
// workflow.
func (s *Service) setRunOptions(d *deployment, timeout *durationpb.Duration, onFailure *runtimev1.OnFailure) error {
	if timeout != nil {
		if err := timeout.CheckValid(); err != nil || timeout.AsDuration() <= 0 || timeout.AsDuration() > s.cfg.MaxRunTimeout {
			return invalid("run_timeout", "must be more than 0 and at most %s", s.cfg.MaxRunTimeout)
		}
		d.runTimeout = timeout.AsDuration()
	}
	if onFailure == nil {
		return nil
	}
	raw, target := strings.TrimSpace(onFailure.GetWebhookUrl()), strings.TrimSpace(onFailure.GetDeploymentId())
	switch {
	case raw == "" && target == "":
		return invalid("on_failure", "needs a webhook_url, a deployment_id or both")
	case target == d.id:
		return invalid("on_failure.deployment_id", "must name another deployment")
	}
	d.onFailure = &runtimev1.OnFailure{DeploymentId: target}
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil, u.Scheme != "http" && u.Scheme != "https", u.Hostname() == "":
		return invalid("on_failure.webhook_url", "must be an absolute http or https URL")
	case u.User != nil:
		return invalid("on_failure.webhook_url", "must not carry credentials")
	case len(raw) > maxFailureURLLen:
		return invalid("on_failure.webhook_url", "must be at most %d characters", maxFailureURLLen)
	case strings.Contains(raw, "{{"):
		// The URL is handed to the engine as it is, not as a template.
		return invalid("on_failure.webhook_url", "must not contain \"{{\"")
	}
	d.onFailure.WebhookUrl = raw
	return nil
}

// checkErrorWorkflow makes sure d's error workflow is a deployment of the
// same tenant.
func (s *Service) checkErrorWorkflow(ctx context.Context, d *deployment) error {
	target := d.onFailure.GetDeploymentId()
	if target == "" {
		return nil
	}
	if _, err := s.repo.getDeployment(ctx, d.tenant, target); errors.Is(err, errNotFound) {
		return invalid("on_failure.deployment_id", "no deployment %q", target)
	} else if err != nil {
		return s.internal(ctx, "read error workflow", err)
	}
	return nil
}

// delaySlack is the time a run whose deadline is derived from its delays
// gets for everything else: the engine's usual default deadline.
const delaySlack = time.Minute

// checkRunTimeout refuses a run timeout the workflow's delays cannot fit
// in: a run that must wait longer than its deadline can only time out.
// Without one, the delays must fit in the maximum.
func (s *Service) checkRunTimeout(d *deployment) error {
	need := longestDelay(d.definition)
	switch {
	case d.runTimeout == 0 && need >= s.cfg.MaxRunTimeout:
		return invalid("workflow_definition", "the delays on its longest path (%s) do not fit in the longest run allowed (%s)", need, s.cfg.MaxRunTimeout)
	case d.runTimeout != 0 && need >= d.runTimeout:
		return invalid("run_timeout", "must be longer than the delays on the workflow's longest path (%s)", need)
	}
	return nil
}

// runTimeout is the deadline of one execution of d: its run_timeout, else
// the runtime's default, else the engine's choice (0) — but a workflow with
// delays that a default could not hold gets the delays plus the usual
// minute, so that its runs are not refused or cut for a deadline the
// deployment never asked for.
func (s *Service) runTimeout(d *deployment) time.Duration {
	if d.runTimeout > 0 {
		return d.runTimeout
	}
	if need := longestDelay(d.definition); need > 0 && (s.cfg.RunTimeout == 0 || need >= s.cfg.RunTimeout) {
		return min(need+delaySlack, s.cfg.MaxRunTimeout)
	}
	return s.cfg.RunTimeout
}

// longestDelay is the most time the delay nodes on any one path of the
// workflow wait in all. Delays the engine would refuse count as nothing:
// validation reports them.
func longestDelay(def *enginev1.WorkflowDefinition) time.Duration {
	into := map[string][]string{}
	for _, c := range def.GetConnections() {
		into[c.GetTarget()] = append(into[c.GetTarget()], c.GetSource())
	}
	own := map[string]time.Duration{}
	for _, n := range def.GetNodes() {
		if n.GetType() == "delay" {
			own[n.GetId()] = delayOf(n)
		}
	}
	memo := map[string]time.Duration{}
	visiting := map[string]bool{}
	var upTo func(id string) time.Duration
	upTo = func(id string) time.Duration {
		if d, ok := memo[id]; ok {
			return d
		}
		if visiting[id] { // a cycle; the engine refuses the definition
			return 0
		}
		visiting[id] = true
		var most time.Duration
		for _, from := range into[id] {
			most = max(most, upTo(from))
		}
		memo[id] = most + own[id]
		return memo[id]
	}
	var longest time.Duration
	for _, n := range def.GetNodes() {
		longest = max(longest, upTo(n.GetId()))
	}
	return longest
}

func delayOf(n *enginev1.Node) time.Duration {
	v := n.GetParameters().GetFields()["duration"]
	switch v.GetKind().(type) {
	case *structpb.Value_StringValue:
		d, _ := time.ParseDuration(v.GetStringValue())
		return max(d, 0)
	case *structpb.Value_NumberValue:
		if f := v.GetNumberValue(); f > 0 && f < float64(1<<62)/float64(time.Second) {
			return time.Duration(f * float64(time.Second))
		}
	}
	return 0
}
