package runtimesvc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

var (
	errNotFound  = errors.New("not found")
	errPathTaken = errors.New("webhook path taken")
)

// repo is the runtime's SQL, written once for both dialects.
type repo struct {
	db *store.DB
	// starts and finishes batch the writes that draw execution positions.
	starts, finishes commitGroup
}

const deploymentCols = `seq, id, tenant, name, description, status, definition, triggers, created_at, updated_at, version`

func encodeDeployment(d *deployment) (def, trig []byte, cronExpr string, err error) {
	def, err = proto.Marshal(d.definition)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode definition: %w", err)
	}
	// The run options travel with the triggers: both are settings read
	// whole with the deployment, and a new one needs no schema change.
	holder := &runtimev1.Deployment{Triggers: d.triggers, OnFailure: d.onFailure}
	if d.runTimeout > 0 {
		holder.RunTimeout = durationpb.New(d.runTimeout)
	}
	trig, err = proto.Marshal(holder)
	if err != nil {
		return nil, nil, "", fmt.Errorf("encode triggers: %w", err)
	}
	if st := findTrigger(d.triggers, triggerSchedule); st != nil {
		cronExpr = st.GetCron()
	}
	return def, trig, cronExpr, nil
}

func (r *repo) insertDeployment(ctx context.Context, d *deployment) error {
	def, trig, cronExpr, err := encodeDeployment(d)
	if err != nil {
		return err
	}
	return r.db.InTx(ctx, func(tx *store.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO deployments (id, tenant, name, description, status, definition, triggers, cron, created_at, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			d.id, d.tenant, d.name, d.description, d.status, def, trig, cronExpr, d.createdAt.UnixMicro(), d.updatedAt.UnixMicro())
		if err != nil {
			return fmt.Errorf("insert deployment: %w", err)
		}
		if err := insertVersion(ctx, tx, d, def); err != nil {
			return err
		}
		return claimPath(ctx, tx, d)
	})
}

// updateDeployment stores d; when newVersion is set, the definition
// changed and becomes the next version (d.version is set to it).
func (r *repo) updateDeployment(ctx context.Context, d *deployment, newVersion bool) error {
	def, trig, cronExpr, err := encodeDeployment(d)
	if err != nil {
		return err
	}
	step := 0
	if newVersion {
		step = 1
	}
	return r.db.InTx(ctx, func(tx *store.Tx) error {
		var version int32
		err := tx.QueryRow(ctx, `UPDATE deployments SET name = ?, description = ?, status = ?, definition = ?, triggers = ?, cron = ?, updated_at = ?,
				version = version + ?
			WHERE id = ? AND tenant = ? RETURNING version`,
			d.name, d.description, d.status, def, trig, cronExpr, d.updatedAt.UnixMicro(), step, d.id, d.tenant).Scan(&version)
		if errors.Is(err, sql.ErrNoRows) {
			return errNotFound
		}
		if err != nil {
			return fmt.Errorf("update deployment: %w", err)
		}
		d.version = version
		if newVersion {
			if err := insertVersion(ctx, tx, d, def); err != nil {
				return err
			}
		}
		if err := releasePath(ctx, tx, d.id); err != nil {
			return err
		}
		return claimPath(ctx, tx, d)
	})
}

func (r *repo) deleteDeployment(ctx context.Context, tenant, id string) error {
	return r.db.InTx(ctx, func(tx *store.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM deployments WHERE id = ? AND tenant = ?`, id, tenant).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errNotFound
		}
		if err != nil {
			return fmt.Errorf("find deployment: %w", err)
		}
		if err := releasePath(ctx, tx, id); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM deployments WHERE id = ? AND tenant = ?`, id, tenant); err != nil {
			return fmt.Errorf("delete deployment: %w", err)
		}
		return nil
	})
}

func (r *repo) getDeployment(ctx context.Context, tenant, id string) (*deployment, error) {
	if id == "" {
		return nil, errNotFound
	}
	row := r.db.QueryRow(ctx, `SELECT `+deploymentCols+` FROM deployments WHERE id = ? AND tenant = ?`, id, tenant)
	d, _, err := scanDeployment(row)
	if err != nil {
		return nil, err
	}
	return d, r.fillNamespace(ctx, tenant, d)
}

// fillNamespace sets the webhook namespace of those of a tenant's
// deployments that have a webhook trigger.
func (r *repo) fillNamespace(ctx context.Context, tenant string, ds ...*deployment) error {
	var ns string
	for i, d := range ds {
		if findTrigger(d.triggers, triggerWebhook) == nil {
			continue
		}
		if ns == "" {
			var err error
			if ns, err = r.namespaceOf(ctx, tenant); err != nil {
				return err
			}
		}
		ds[i].hookNS = ns
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func scanDeployment(row scanner) (*deployment, int64, error) {
	var (
		d                deployment
		seq              int64
		def, trig        []byte
		created, updated int64
	)
	err := row.Scan(&seq, &d.id, &d.tenant, &d.name, &d.description, &d.status, &def, &trig, &created, &updated, &d.version)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, 0, errNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("scan deployment: %w", err)
	}
	d.definition = &enginev1.WorkflowDefinition{}
	if err := proto.Unmarshal(def, d.definition); err != nil {
		return nil, 0, fmt.Errorf("decode definition of %s: %w", d.id, err)
	}
	var holder runtimev1.Deployment
	if err := proto.Unmarshal(trig, &holder); err != nil {
		return nil, 0, fmt.Errorf("decode triggers of %s: %w", d.id, err)
	}
	d.triggers = holder.GetTriggers()
	d.onFailure = holder.GetOnFailure()
	d.runTimeout = holder.GetRunTimeout().AsDuration()
	d.createdAt = time.UnixMicro(created).UTC()
	d.updatedAt = time.UnixMicro(updated).UTC()
	return &d, seq, nil
}

type deploymentPage struct {
	items []*deployment
	total int64
	next  string
}

// listDeployments pages by the insertion sequence. Page numbers skip with
// OFFSET: a tenant's deployments number in the hundreds, not millions (the
// executions listing, which does grow, never skips this way).
func (r *repo) listDeployments(ctx context.Context, tenant, status string, pg paging) (*deploymentPage, error) {
	where, args := `tenant = ?`, []any{tenant}
	if status != "" {
		where += ` AND status = ?`
		args = append(args, status)
	}
	out := &deploymentPage{}
	if err := r.db.QueryRow(ctx, `SELECT COUNT(*) FROM deployments WHERE `+where, args...).Scan(&out.total); err != nil {
		return nil, fmt.Errorf("count deployments: %w", err)
	}
	q := `SELECT ` + deploymentCols + ` FROM deployments WHERE ` + where
	if pg.cursor != nil {
		q += ` AND seq < ?`
		args = append(args, pg.cursor.After)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, pg.size+1)
	if pg.cursor == nil && pg.page > 1 {
		q += ` OFFSET ?`
		args = append(args, pg.offset())
	}
	rows, err := r.db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	defer rows.Close()
	var lastSeq int64
	for rows.Next() {
		d, seq, err := scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		if len(out.items) == int(pg.size) {
			out.next = encodeCursor("deployments:"+status, pg.page+1, "seq", lastSeq)
			break
		}
		out.items = append(out.items, d)
		lastSeq = seq
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	_ = rows.Close() // free the connection before the next query
	return out, r.fillNamespace(ctx, tenant, out.items...)
}

// scheduledDeployment is what the scheduler needs of a deployment.
type scheduledDeployment struct {
	id, tenant, cron string
}

func (r *repo) scheduledDeployments(ctx context.Context) ([]scheduledDeployment, error) {
	rows, err := r.db.Query(ctx, `SELECT id, tenant, cron FROM deployments WHERE status = ? AND cron <> ''`, deploymentActive)
	if err != nil {
		return nil, fmt.Errorf("list scheduled deployments: %w", err)
	}
	defer rows.Close()
	var out []scheduledDeployment
	for rows.Next() {
		var sd scheduledDeployment
		if err := rows.Scan(&sd.id, &sd.tenant, &sd.cron); err != nil {
			return nil, fmt.Errorf("scan scheduled deployment: %w", err)
		}
		out = append(out, sd)
	}
	return out, rows.Err()
}
