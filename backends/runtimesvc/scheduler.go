package runtimesvc

import (
	"context"
	"time"

	"github.com/robfig/cron/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// scheduleEntry is one deployment's cron schedule and its next tick.
type scheduleEntry struct {
	tenant string
	cron   string
	sched  cron.Schedule
	next   time.Time
}

// scheduler fires schedule triggers. Every replica runs one; a tick is
// claimed by inserting the execution with (deployment_id, scheduled_at)
// unique, so exactly one replica runs it. Ticks are the schedule's own
// activation times (UTC), identical in every replica.
type scheduler struct {
	s       *Service
	entries map[string]*scheduleEntry // by deployment id
	changed chan struct{}
}

func (s *Service) scheduleChanged() {
	if s.sched == nil {
		return
	}
	select {
	case s.sched.changed <- struct{}{}:
	default:
	}
}

func (sc *scheduler) loop(ctx context.Context) {
	sc.sync(ctx)
	tick := time.NewTicker(sc.s.cfg.ScheduleTick)
	defer tick.Stop()
	resync := time.NewTicker(sc.s.cfg.ScheduleSync)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sc.changed:
			sc.sync(ctx)
		case <-resync.C:
			sc.sync(ctx)
		case now := <-tick.C:
			sc.fireDue(ctx, now)
		}
	}
}

// sync reloads the active scheduled deployments, keeping the next tick of
// schedules that did not change.
func (sc *scheduler) sync(ctx context.Context) {
	list, err := sc.s.repo.scheduledDeployments(ctx)
	if err != nil {
		if ctx.Err() == nil {
			sc.s.logger.Error("could not load schedules", "error", err)
		}
		return
	}
	now := time.Now().UTC()
	fresh := make(map[string]*scheduleEntry, len(list))
	for _, sd := range list {
		if old, ok := sc.entries[sd.id]; ok && old.cron == sd.cron {
			fresh[sd.id] = old
			continue
		}
		sched, err := cronParser.Parse(sd.cron)
		if err != nil {
			sc.s.logger.Error("stored cron expression does not parse", "deployment_id", sd.id, "error", err)
			continue
		}
		fresh[sd.id] = &scheduleEntry{tenant: sd.tenant, cron: sd.cron, sched: sched, next: sched.Next(now)}
	}
	sc.entries = fresh
}

func (sc *scheduler) fireDue(ctx context.Context, now time.Time) {
	for id, e := range sc.entries {
		if e.next.IsZero() || now.Before(e.next) {
			continue
		}
		at := e.next
		// Ticks missed while the process was busy or down are skipped, not
		// run in a burst.
		e.next = e.sched.Next(now)
		sc.fire(ctx, id, e.tenant, at)
	}
}

func (sc *scheduler) fire(ctx context.Context, id, tenant string, at time.Time) {
	d, err := sc.s.repo.getDeployment(ctx, tenant, id)
	if err != nil || d.status != deploymentActive || findTrigger(d.triggers, triggerSchedule) == nil {
		return // deleted, paused or changed since the last sync
	}
	data, _ := structpb.NewStruct(map[string]any{"scheduled_at": at.Format(time.RFC3339)})
	_, prev, err := sc.s.start(ctx, launch{d: d, triggerType: triggerSchedule, triggerData: data, scheduledAt: at})
	switch {
	case err == nil && prev == nil:
		sc.s.logger.Info("schedule fired", "deployment_id", id, "scheduled_at", at)
	case err != nil && isDuplicate(err):
		// Another replica claimed this tick.
	case err != nil && ctx.Err() == nil:
		sc.s.logger.Error("could not start a scheduled execution", "deployment_id", id, "error", err)
	}
}
