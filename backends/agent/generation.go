package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// maxAttempts is how many drafts one generation may try before it gives
// up and reports the problems it could not fix.
const maxAttempts = 3

// generationState tracks a session's generation in this process. A chat
// message that arrives while one runs asks for another run after it, with
// the newer conversation.
type generationState struct {
	id    identity
	again bool
}

func (s *Service) startGeneration(key sessionKey, id identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if st, ok := s.generations[key]; ok {
		st.again, st.id = true, id
		return
	}
	s.generations[key] = &generationState{id: id}
	s.wg.Add(1)
	go s.runGenerations(key)
}

func (s *Service) generating(key sessionKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.generations[key]
	return ok
}

func (s *Service) runGenerations(key sessionKey) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		st := s.generations[key]
		id := st.id
		st.again = false
		s.mu.Unlock()

		s.generate(key, id)

		s.mu.Lock()
		if !st.again || s.closed {
			delete(s.generations, key)
			s.mu.Unlock()
			// Watchers decide whether to end on the state above: wake
			// them now that it changed.
			s.hub.notify(key)
			return
		}
		s.mu.Unlock()
	}
}

// generation is one run from the conversation to a deployment.
type generation struct {
	s    *Service
	key  sessionKey
	id   identity
	sess *session
	conv Conversation
}

func (s *Service) generate(key sessionKey, id identity) {
	ctx, cancel := context.WithTimeout(s.ctx, s.genLimit)
	defer cancel()
	g := &generation{s: s, key: key, id: id}
	if err := g.run(ctx); err != nil {
		g.fail(ctx, err)
	}
}

// failure is a reason to end a generation with an error event.
type failure struct {
	reason   string
	problems []map[string]any
}

func (f *failure) Error() string { return f.reason }

func (g *generation) fail(ctx context.Context, err error) {
	data := map[string]any{"reason": "generation failed"}
	var f *failure
	switch {
	case errors.As(err, &f):
		data["reason"] = f.reason
		if len(f.problems) > 0 {
			data["problems"] = f.problems
		}
	case ctx.Err() != nil && g.s.ctx.Err() != nil:
		data["reason"] = "the agent stopped before the generation finished"
	case ctx.Err() != nil:
		data["reason"] = "the generation took too long"
	default:
		g.s.logger.Error("agent: generation failed", "session", g.key.id, "error", err)
	}
	// Record the end even when ctx is done, so watchers are not left
	// waiting on a generation that will never finish.
	if _, err := g.s.appendEvent(context.WithoutCancel(ctx), g.key, eventError, "", data); err != nil {
		g.s.logger.Error("agent: could not record a failed generation", "session", g.key.id, "error", err)
	}
}

func (g *generation) emit(ctx context.Context, typ, workflowID string, data map[string]any) error {
	_, err := g.s.appendEvent(ctx, g.key, typ, workflowID, data)
	return err
}

func (g *generation) run(ctx context.Context) error {
	sess, err := g.s.store.session(ctx, g.key)
	if err != nil {
		return err
	}
	g.sess = sess
	if g.conv, err = g.s.conversation(ctx, sess); err != nil {
		return err
	}
	plan, err := g.s.provider.Plan(ctx, g.conv, nil)
	if question, ok := needDetails(err); ok {
		return g.emit(ctx, eventWaiting, "", map[string]any{"reason": "more details needed", "question": question})
	}
	if err != nil {
		return g.providerFailure(err)
	}
	if err := g.emit(ctx, eventStart, "", map[string]any{"request": g.conv.LastUser()}); err != nil {
		return err
	}
	if plan, err = g.debug(ctx, plan); err != nil {
		return err
	}
	return g.deploy(ctx, plan)
}

func (g *generation) providerFailure(err error) error {
	if _, ok := needDetails(err); ok {
		return &failure{reason: err.Error()}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	g.s.logger.Warn("agent: provider failed to plan", "session", g.key.id, "error", err)
	return &failure{reason: "the assistant could not draft a workflow; try again"}
}

// debug drafts, validates on the engine and repairs, up to maxAttempts,
// then dry-runs the valid draft when that is free of side effects.
func (g *generation) debug(ctx context.Context, plan *Plan) (*Plan, error) {
	for attempt := 1; ; attempt++ {
		if err := checkPlan(plan); err != nil {
			return nil, &failure{reason: "the draft is incomplete: " + err.Error()}
		}
		if err := g.emit(ctx, eventDraft, "", draftData(plan, attempt)); err != nil {
			return nil, err
		}
		problems, err := g.validate(ctx, plan.Definition)
		if err != nil {
			return nil, err
		}
		if len(problems) == 0 {
			if err := g.emit(ctx, eventDebugging, "", map[string]any{"stage": "validate", "status": "passed", "attempt": attempt}); err != nil {
				return nil, err
			}
			break
		}
		if err := g.emit(ctx, eventDebugging, "", map[string]any{"stage": "validate", "status": "failed", "attempt": attempt, "problems": problems}); err != nil {
			return nil, err
		}
		if attempt == maxAttempts {
			return nil, &failure{reason: fmt.Sprintf("the draft still has problems after %d attempts", attempt), problems: problems}
		}
		if plan, err = g.s.provider.Plan(ctx, g.conv, problemTexts(problems)); err != nil {
			return nil, g.providerFailure(err)
		}
	}
	return plan, g.dryRun(ctx, plan)
}

func checkPlan(p *Plan) error {
	switch {
	case p == nil || p.Definition == nil:
		return errors.New("no workflow definition")
	case len(p.Definition.GetNodes()) == 0:
		return errors.New("the workflow has no nodes")
	case strings.TrimSpace(p.Name) == "":
		return errors.New("the workflow has no name")
	}
	return nil
}

func draftData(p *Plan, attempt int) map[string]any {
	triggers := make([]any, len(p.Triggers))
	for i, t := range p.Triggers {
		triggers[i] = jsonValue(t)
	}
	return map[string]any{
		"name":                p.Name,
		"description":         p.Description,
		"workflow_definition": jsonValue(p.Definition),
		"triggers":            triggers,
		"attempt":             attempt,
	}
}

func problemTexts(problems []map[string]any) []string {
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = fmt.Sprintf("%v: %v", p["field"], p["reason"])
	}
	return out
}

// validate asks the engine whether the definition is valid; the problems
// it names are returned, not failed on.
func (g *generation) validate(ctx context.Context, def *enginev1.WorkflowDefinition) ([]map[string]any, error) {
	req := connect.NewRequest(&enginev1.ExecuteWorkflowRequest{WorkflowDefinition: def, ValidateOnly: true})
	g.id.apply(req.Header())
	_, err := g.s.engine.ExecuteWorkflow(ctx, req)
	if err == nil {
		return nil, nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument {
		return nil, g.upstreamFailure("the engine could not validate the draft", err)
	}
	problems := violations(ce)
	if len(problems) == 0 {
		problems = []map[string]any{{"field": "workflow_definition", "reason": ce.Message()}}
	}
	return problems, nil
}

func violations(ce *connect.Error) []map[string]any {
	var out []map[string]any
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			continue
		}
		if br, ok := v.(*errdetails.BadRequest); ok {
			for _, fv := range br.GetFieldViolations() {
				out = append(out, map[string]any{"field": fv.GetField(), "reason": fv.GetDescription()})
			}
		}
	}
	return out
}

func (g *generation) upstreamFailure(reason string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	g.s.logger.Warn("agent: "+reason, "session", g.key.id, "error", err)
	return &failure{reason: reason}
}

// dryRun runs the draft on sample data when it cannot touch the outside
// world (no HTTP requests) or wait long (no delays); its outcome is
// reported for the user to see, not failed on: sample data is a guess.
func (g *generation) dryRun(ctx context.Context, plan *Plan) error {
	data := map[string]any{"stage": "dry_run"}
	if reason := sideEffects(plan.Definition); reason != "" || plan.SampleInput == nil {
		if reason == "" {
			reason = "no sample input to run with"
		}
		data["status"], data["reason"] = "skipped", reason
		return g.emit(ctx, eventDebugging, "", data)
	}
	req := connect.NewRequest(&enginev1.ExecuteWorkflowRequest{
		WorkflowDefinition: plan.Definition,
		TriggerData:        plan.SampleInput,
		Timeout:            durationpb.New(dryRunTimeout),
	})
	g.id.apply(req.Header())
	resp, err := g.s.engine.ExecuteWorkflow(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		data["status"], data["reason"] = "failed", "the engine refused the dry run: "+connect.CodeOf(err).String()
		return g.emit(ctx, eventDebugging, "", data)
	}
	res := resp.Msg.GetResult()
	data["status"] = res.GetStatus()
	data["sample_input"] = jsonValue(plan.SampleInput)
	data["output"] = jsonValue(res.GetOutput())
	if res.GetError() != "" {
		data["error"] = res.GetError()
	}
	nodes := make([]any, 0, len(res.GetNodeResults()))
	for _, n := range res.GetNodeResults() {
		nodes = append(nodes, map[string]any{"node_id": n.GetNodeId(), "status": n.GetStatus(), "error": n.GetError()})
	}
	data["node_results"] = nodes
	return g.emit(ctx, eventDebugging, "", data)
}

func sideEffects(def *enginev1.WorkflowDefinition) string {
	for _, n := range def.GetNodes() {
		switch n.GetType() {
		case "http_request":
			return fmt.Sprintf("node %q calls an external endpoint", n.GetId())
		case "delay":
			return fmt.Sprintf("node %q waits", n.GetId())
		case "for_each":
			for _, st := range n.GetParameters().GetFields()["steps"].GetListValue().GetValues() {
				switch st.GetStructValue().GetFields()["type"].GetStringValue() {
				case "http_request", "delay":
					return fmt.Sprintf("node %q calls an external endpoint or waits for each item", n.GetId())
				}
			}
		}
	}
	return ""
}

// deploy creates the session's deployment, or updates it when the session
// already has one (an edit session, or an earlier generation).
func (g *generation) deploy(ctx context.Context, plan *Plan) error {
	var (
		dep *runtimev1.Deployment
		err error
	)
	if g.sess.workflowID != "" {
		dep, err = g.update(ctx, plan)
	} else {
		dep, err = g.create(ctx, plan)
	}
	if err != nil {
		return err
	}
	def, err := protojson.Marshal(dep.GetWorkflowDefinition())
	if err != nil {
		return err
	}
	if err := g.s.store.saveWorkflow(ctx, g.key, string(def), dep.GetDeploymentId()); err != nil {
		return err
	}
	data := map[string]any{
		"name":                dep.GetName(),
		"deployment_id":       dep.GetDeploymentId(),
		"status":              dep.GetStatus(),
		"workflow_definition": jsonValue(dep.GetWorkflowDefinition()),
	}
	if dep.GetWebhookUrl() != "" {
		data["webhook_url"] = dep.GetWebhookUrl()
	}
	return g.emit(ctx, eventComplete, dep.GetDeploymentId(), data)
}

func (g *generation) create(ctx context.Context, plan *Plan) (*runtimev1.Deployment, error) {
	uniqueWebhookPaths(plan.Triggers, g.key.id)
	req := connect.NewRequest(&runtimev1.CreateDeploymentRequest{
		WorkflowDefinition: plan.Definition,
		Triggers:           plan.Triggers,
		Name:               plan.Name,
		Description:        plan.Description,
	})
	g.id.apply(req.Header())
	resp, err := g.s.runtime.CreateDeployment(ctx, req)
	if err != nil {
		return nil, g.deployFailure(err)
	}
	return resp.Msg.GetDeployment(), nil
}

func (g *generation) update(ctx context.Context, plan *Plan) (*runtimev1.Deployment, error) {
	current, err := g.s.loadDeployment(ctx, g.id, g.sess.workflowID)
	if err != nil {
		return nil, g.deployFailure(err)
	}
	keepWebhookPath(plan.Triggers, current.GetTriggers())
	req := connect.NewRequest(&runtimev1.UpdateDeploymentRequest{
		DeploymentId:       g.sess.workflowID,
		WorkflowDefinition: plan.Definition,
		Triggers:           plan.Triggers,
		Name:               plan.Name,
		Description:        plan.Description,
	})
	g.id.apply(req.Header())
	resp, err := g.s.runtime.UpdateDeployment(ctx, req)
	if err != nil {
		return nil, g.deployFailure(err)
	}
	return resp.Msg.GetDeployment(), nil
}

// uniqueWebhookPaths suffixes webhook paths with the session, because
// paths are unique across deployments and two sessions may well both
// describe "orders".
func uniqueWebhookPaths(triggers []*runtimev1.Trigger, sessionID string) {
	suffix := strings.ReplaceAll(sessionID, "-", "")
	if len(suffix) > 8 {
		suffix = suffix[:8]
	}
	for _, t := range triggers {
		if t.GetType() != "webhook" {
			continue
		}
		if t.GetPath() == "" {
			t.Path = "agent"
		}
		if !strings.HasSuffix(t.GetPath(), "-"+suffix) {
			t.Path += "-" + suffix
		}
	}
}

// keepWebhookPath keeps the deployment's public webhook URL stable across
// revisions: callers already use it.
func keepWebhookPath(next, current []*runtimev1.Trigger) {
	for _, c := range current {
		if c.GetType() != "webhook" || c.GetPath() == "" {
			continue
		}
		for _, n := range next {
			if n.GetType() == "webhook" {
				n.Path = c.GetPath()
				return
			}
		}
	}
}

// deployFailure explains a refused deployment; the runtime's validation
// and conflict messages are meant for users, anything else is not.
func (g *generation) deployFailure(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		switch ce.Code() {
		case connect.CodeInvalidArgument:
			return &failure{reason: "the runtime refused the workflow: " + ce.Message(), problems: violations(ce)}
		case connect.CodeAlreadyExists:
			return &failure{reason: "the runtime refused the workflow: " + ce.Message()}
		case connect.CodeNotFound:
			return &failure{reason: "the workflow being edited no longer exists"}
		case connect.CodePermissionDenied:
			// The agent deploys as its caller, with the caller's scopes.
			return &failure{reason: "you may not deploy workflows: " + ce.Message()}
		}
	}
	return g.upstreamFailure("the runtime could not deploy the workflow", err)
}
