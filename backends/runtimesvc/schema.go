package runtimesvc

import "github.com/flowgate/flowgate/backends/store"

// component is the runtime's name in the migrations table.
const component = "runtime"

// migrations are the runtime's schema steps; append only.
//
// Times are Unix microseconds. Executions carry dense per-group positions
// (pos_all per tenant, pos_dep per deployment, pos_st/pos_dst per final
// status) drawn from execution_counters in the inserting transaction (one
// transaction writes all the executions waiting for it: repo_batch.go), so
// that page N of a listing is an index seek to a computed position instead
// of an OFFSET scan, and total counts are a single row read. Executions are
// never deleted, which keeps the positions dense.
func migrations(d store.Dialect) []string {
	return []string{
		`CREATE TABLE deployments (
			seq ` + d.SerialPrimaryKey() + `,
			id TEXT NOT NULL UNIQUE,
			tenant TEXT NOT NULL,
			name TEXT NOT NULL,
			description TEXT NOT NULL,
			status TEXT NOT NULL,
			definition ` + d.Blob() + ` NOT NULL,
			triggers ` + d.Blob() + ` NOT NULL,
			cron TEXT NOT NULL DEFAULT '',
			created_at BIGINT NOT NULL,
			updated_at BIGINT NOT NULL
		)`,
		`CREATE INDEX deployments_tenant_seq ON deployments (tenant, seq)`,
		`CREATE INDEX deployments_tenant_status_seq ON deployments (tenant, status, seq)`,
		`CREATE TABLE webhook_paths (
			path TEXT PRIMARY KEY,
			deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE
		)`,
		`CREATE INDEX webhook_paths_deployment ON webhook_paths (deployment_id)`,
		`CREATE TABLE executions (
			seq ` + d.SerialPrimaryKey() + `,
			id TEXT NOT NULL UNIQUE,
			tenant TEXT NOT NULL,
			deployment_id TEXT NOT NULL,
			status TEXT NOT NULL,
			trigger_type TEXT NOT NULL,
			trigger_data ` + d.Blob() + `,
			output ` + d.Blob() + `,
			result ` + d.Blob() + `,
			error TEXT NOT NULL DEFAULT '',
			started_at BIGINT NOT NULL,
			finished_at BIGINT,
			owner TEXT NOT NULL,
			idempotency_key TEXT,
			scheduled_at BIGINT,
			pos_all BIGINT NOT NULL,
			pos_dep BIGINT NOT NULL,
			pos_st BIGINT,
			pos_dst BIGINT
		)`,
		`CREATE UNIQUE INDEX executions_pos_all ON executions (tenant, pos_all)`,
		`CREATE UNIQUE INDEX executions_pos_dep ON executions (tenant, deployment_id, pos_dep)`,
		`CREATE UNIQUE INDEX executions_pos_st ON executions (tenant, status, pos_st)`,
		`CREATE UNIQUE INDEX executions_pos_dst ON executions (tenant, deployment_id, status, pos_dst)`,
		`CREATE INDEX executions_status_seq ON executions (tenant, status, seq)`,
		`CREATE INDEX executions_running_owner ON executions (owner) WHERE status = 'running'`,
		`CREATE UNIQUE INDEX executions_idempotency ON executions (deployment_id, idempotency_key) WHERE idempotency_key IS NOT NULL`,
		`CREATE UNIQUE INDEX executions_schedule_claim ON executions (deployment_id, scheduled_at) WHERE scheduled_at IS NOT NULL`,
		`CREATE TABLE execution_counters (
			tenant TEXT NOT NULL,
			scope TEXT NOT NULL,
			n BIGINT NOT NULL,
			PRIMARY KEY (tenant, scope)
		)`,
		// Webhook paths are per tenant: a tenant's webhook URLs start with
		// its namespace, a random token, so that no tenant can learn of or
		// take another's paths. Tenants with webhooks get theirs here.
		`CREATE TABLE webhook_namespaces (
			tenant TEXT PRIMARY KEY,
			token TEXT NOT NULL UNIQUE
		)`,
		`INSERT INTO webhook_namespaces (tenant, token)
			SELECT DISTINCT d.tenant, ` + d.Pick(`lower(hex(randomblob(16)))`, `replace(gen_random_uuid()::text, '-', '')`) + `
			FROM webhook_paths w JOIN deployments d ON d.id = w.deployment_id`,
		`CREATE TABLE webhook_routes (
			tenant TEXT NOT NULL,
			path TEXT NOT NULL,
			deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			PRIMARY KEY (tenant, path)
		)`,
		`CREATE INDEX webhook_routes_deployment ON webhook_routes (deployment_id)`,
		`INSERT INTO webhook_routes (tenant, path, deployment_id)
			SELECT d.tenant, w.path, w.deployment_id FROM webhook_paths w JOIN deployments d ON d.id = w.deployment_id`,
		`DROP TABLE webhook_paths`,
		// Signatures of webhook requests already accepted, until their
		// timestamp leaves the tolerance window, so that a replay is refused
		// by every replica.
		`CREATE TABLE webhook_signatures (
			deployment_id TEXT NOT NULL,
			signature TEXT NOT NULL,
			expires_at BIGINT NOT NULL,
			PRIMARY KEY (deployment_id, signature)
		)`,
		`CREATE INDEX webhook_signatures_expiry ON webhook_signatures (expires_at)`,
		// A hash of the request an idempotency key was first used with, so
		// that the key reused for another request is refused.
		`ALTER TABLE executions ADD COLUMN request_hash TEXT`,
		// Node results as each node finishes, so that a running execution
		// shows its progress and an interrupted one what had completed; the
		// rows of an execution that stored its full result are removed.
		`CREATE TABLE execution_nodes (
			execution_id TEXT NOT NULL,
			seq INTEGER NOT NULL,
			result ` + d.Blob() + ` NOT NULL,
			PRIMARY KEY (execution_id, seq)
		)`,
		// Deployment versions: an update that changes the definition adds
		// one; executions record the version they ran.
		`ALTER TABLE deployments ADD COLUMN version BIGINT NOT NULL DEFAULT 1`,
		`CREATE TABLE deployment_versions (
			deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
			version BIGINT NOT NULL,
			definition ` + d.Blob() + ` NOT NULL,
			created_at BIGINT NOT NULL,
			PRIMARY KEY (deployment_id, version)
		)`,
		`INSERT INTO deployment_versions (deployment_id, version, definition, created_at)
			SELECT id, version, definition, updated_at FROM deployments`,
		`ALTER TABLE executions ADD COLUMN deployment_version BIGINT NOT NULL DEFAULT 0`,
		`ALTER TABLE executions ADD COLUMN retry_of TEXT NOT NULL DEFAULT ''`,
		// A cancellation asked of a replica that does not run the
		// execution, for the one that does to act on.
		`ALTER TABLE executions ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0`,
	}
}
