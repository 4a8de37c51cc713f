package engine

import (
	"time"
)

// waiter is a node that spends a known time doing nothing (a delay, or an
// iteration whose steps hold delays): at least that long, whatever it
// receives.
type waiter interface {
	wait() time.Duration
}

// checkDelays refuses a workflow whose delays cannot all pass before the
// run's deadline: the delays along any path from the trigger add up, and
// that sum must stay below the deadline, or every run would end timed_out.
func (wf *workflow) checkDelays(deadline, maxDeadline time.Duration) *fieldError {
	total := make(map[*node]time.Duration, len(wf.order))
	for _, n := range wf.order {
		var before time.Duration
		for _, e := range n.in {
			before = max(before, total[e.from])
		}
		w, ok := n.exec.(waiter)
		if !ok {
			total[n] = before
			continue
		}
		total[n] = before + w.wait()
		if total[n] >= deadline {
			field := nodeField(n.index, "parameters")
			if n.typ == "delay" {
				field += ".duration"
			}
			return fieldErrorf(field, "node %q: the delays on the way to the end of this node add up to %s, which does not fit in the run's deadline of %s; "+
				"shorten them or give the run a longer timeout (at most %s)", n.id, total[n], deadline, maxDeadline)
		}
	}
	return nil
}

func (n *delayNode) wait() time.Duration { return n.d }
