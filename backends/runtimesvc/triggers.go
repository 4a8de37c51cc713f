package runtimesvc

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/robfig/cron/v3"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// Trigger types and webhook response modes, as the proto spells them.
const (
	triggerWebhook  = "webhook"
	triggerManual   = "manual"
	triggerSchedule = "schedule"

	modeAsync = "async"
	modeWait  = "wait"

	minSecretLen = 16
	maxSecretLen = 512
)

// webhookPathPattern: URL-safe segments separated by single slashes.
var webhookPathPattern = regexp.MustCompile(`^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$`)

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// normalizeWebhookPath trims the slashes callers tend to add.
func normalizeWebhookPath(p string) string { return strings.Trim(p, "/") }

// hasDotSegment reports a "." or ".." segment: a proxy or client that
// resolves them would deliver the request to another path than was signed
// or configured.
func hasDotSegment(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// checkTriggers validates and normalizes the triggers of a deployment in
// place: at most one of each type, a well-formed unique path, a strong
// enough secret, a known response mode, a parseable cron expression.
func (s *Service) checkTriggers(ts []*runtimev1.Trigger) error {
	if len(ts) == 0 {
		return invalid("triggers", "at least one trigger is required (webhook, manual or schedule)")
	}
	seen := map[string]int{}
	for i, t := range ts {
		field := fmt.Sprintf("triggers[%d]", i)
		if j, dup := seen[t.GetType()]; dup {
			return invalid(field+".type", "a deployment has at most one %s trigger; triggers[%d] is one", t.GetType(), j)
		}
		seen[t.GetType()] = i
		var err error
		switch t.GetType() {
		case triggerWebhook:
			err = s.checkWebhookTrigger(t, field)
		case triggerManual:
			err = checkNoWebhookFields(t, field, "manual")
			if err == nil && t.GetCron() != "" {
				err = invalid(field+".cron", "only a schedule trigger has a cron expression")
			}
		case triggerSchedule:
			err = checkScheduleTrigger(t, field)
		case "":
			err = invalid(field+".type", "is required; one of webhook, manual, schedule")
		default:
			err = invalid(field+".type", "unknown trigger type %q; one of webhook, manual, schedule", t.GetType())
		}
		if err != nil {
			return err
		}
		t.HasSecret = false // output only; recomputed when read
	}
	return nil
}

func (s *Service) checkWebhookTrigger(t *runtimev1.Trigger, field string) error {
	t.Path = normalizeWebhookPath(t.GetPath())
	switch {
	case t.GetPath() == "":
		return invalid(field+".path", "is required for a webhook trigger")
	case len(t.GetPath()) > 200 || !webhookPathPattern.MatchString(t.GetPath()):
		return invalid(field+".path", "%q must be at most 200 characters of letters, digits, '.', '_', '~', '-' in '/'-separated segments", t.GetPath())
	case hasDotSegment(t.GetPath()):
		return invalid(field+".path", "%q must not have '.' or '..' segments", t.GetPath())
	}
	if sec := t.GetSecret(); sec != "" && (len(sec) < minSecretLen || len(sec) > maxSecretLen) {
		return invalid(field+".secret", "must be %d to %d characters", minSecretLen, maxSecretLen)
	}
	switch t.GetResponseMode() {
	case "":
		t.ResponseMode = modeAsync
	case modeAsync, modeWait:
	default:
		return invalid(field+".response_mode", "must be async or wait")
	}
	if rt := t.GetResponseTimeout(); rt != nil {
		if err := rt.CheckValid(); err != nil || rt.AsDuration() <= 0 || rt.AsDuration() > s.maxResponseTimeout {
			return invalid(field+".response_timeout", "must be more than 0 and at most %s", s.maxResponseTimeout)
		}
		if t.GetResponseMode() != modeWait {
			return invalid(field+".response_timeout", "only applies with response_mode wait")
		}
	}
	if t.GetCron() != "" {
		return invalid(field+".cron", "only a schedule trigger has a cron expression")
	}
	return nil
}

func checkNoWebhookFields(t *runtimev1.Trigger, field, typ string) error {
	switch {
	case t.GetPath() != "":
		return invalid(field+".path", "only a webhook trigger has a path, not a %s trigger", typ)
	case t.GetSecret() != "":
		return invalid(field+".secret", "only a webhook trigger has a secret, not a %s trigger", typ)
	case t.GetResponseMode() != "":
		return invalid(field+".response_mode", "only a webhook trigger has a response mode, not a %s trigger", typ)
	case t.GetResponseTimeout() != nil:
		return invalid(field+".response_timeout", "only a webhook trigger has a response timeout, not a %s trigger", typ)
	}
	return nil
}

func checkScheduleTrigger(t *runtimev1.Trigger, field string) error {
	if err := checkNoWebhookFields(t, field, "schedule"); err != nil {
		return err
	}
	if strings.TrimSpace(t.GetCron()) == "" {
		return invalid(field+".cron", "is required for a schedule trigger")
	}
	t.Cron = strings.TrimSpace(t.GetCron())
	sched, err := cronParser.Parse(t.GetCron())
	if err != nil {
		return invalid(field+".cron", "%q is not a cron expression (five fields, or a descriptor like @hourly): %v", t.GetCron(), err)
	}
	// Every replica must agree on the ticks, so the schedule has to be one
	// they compute identically; @every intervals are relative to when a
	// process loaded them, and very frequent schedules only pile up runs.
	if strings.HasPrefix(t.GetCron(), "@every") {
		return invalid(field+".cron", "@every is not supported; use a five-field expression")
	}
	now := time.Now()
	if first := sched.Next(now); first.IsZero() {
		return invalid(field+".cron", "%q never fires", t.GetCron())
	}
	return nil
}

func findTrigger(ts []*runtimev1.Trigger, typ string) *runtimev1.Trigger {
	for _, t := range ts {
		if t.GetType() == typ {
			return t
		}
	}
	return nil
}

// publicTriggers copies triggers for a response: secrets are write only.
func publicTriggers(ts []*runtimev1.Trigger) []*runtimev1.Trigger {
	out := make([]*runtimev1.Trigger, len(ts))
	for i, t := range ts {
		c := &runtimev1.Trigger{
			Type: t.GetType(), Path: t.GetPath(), HasSecret: t.GetSecret() != "",
			ResponseMode: t.GetResponseMode(), ResponseTimeout: t.GetResponseTimeout(), Cron: t.GetCron(),
		}
		out[i] = c
	}
	return out
}
