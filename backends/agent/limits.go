package agent

import "time"

// dryRunTimeout bounds a dry run of a draft on the engine.
const dryRunTimeout = 10 * time.Second
