package runtimesvc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/flowgate/flowgate/backends/store"
	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// Execution statuses beyond the engine's run statuses.
const (
	statusRunning     = "running"
	statusInterrupted = "interrupted"
)

// finalStatuses are the statuses an execution ends in; it never leaves them.
var finalStatuses = map[string]bool{
	"succeeded": true, "failed": true, "timed_out": true, "canceled": true, statusInterrupted: true,
}

var errDuplicate = errors.New("duplicate execution")

// execution is a stored execution.
type execution struct {
	id           string
	tenant       string
	deploymentID string
	status       string
	triggerType  string
	triggerData  *structpb.Struct
	output       *structpb.Value
	errText      string
	startedAt    time.Time
	finishedAt   time.Time // zero while running
	result       *enginev1.ExecutionResult
	pos          int64 // position in the ordering of the listing that read it

	version int32  // of the deployment's definition
	retryOf string // the execution this one retries
}

func (e *execution) toProto(withNodes bool) *runtimev1.Execution {
	out := &runtimev1.Execution{
		ExecutionId:  e.id,
		DeploymentId: e.deploymentID,
		Status:       e.status,
		TriggerType:  e.triggerType,
		TriggerData:  e.triggerData,
		Output:       e.output,
		Error:        e.errText,
		StartedAt:    timestamppb.New(e.startedAt),
	}
	out.DeploymentVersion, out.RetryOf = e.version, e.retryOf
	if !e.finishedAt.IsZero() {
		out.FinishedAt = timestamppb.New(e.finishedAt)
	}
	if withNodes && e.result != nil {
		out.NodeResults = e.result.GetNodeResults()
	}
	return out
}

func scopeAll() string                     { return "all" }
func scopeDep(dep string) string           { return "dep:" + dep }
func scopeStatus(st string) string         { return "st:" + st }
func scopeDepStatus(dep, st string) string { return "dst:" + dep + ":" + st }

// newExecution is what starting an execution records.
type newExecution struct {
	e           *execution
	owner       string
	idemKey     string    // "" when none
	requestHash string    // of the request idemKey came with
	scheduledAt time.Time // zero unless a schedule tick
}

// insertExecution records a running execution. errDuplicate means the
// idempotency key or schedule tick was taken by an earlier execution.
func (r *repo) insertExecution(ctx context.Context, ne newExecution) error {
	e := ne.e
	data, err := proto.Marshal(e.triggerData)
	if err != nil {
		return fmt.Errorf("encode trigger data: %w", err)
	}
	var idem, reqHash, sched any
	if ne.idemKey != "" {
		idem, reqHash = ne.idemKey, ne.requestHash
	}
	if !ne.scheduledAt.IsZero() {
		sched = ne.scheduledAt.UnixMicro()
	}
	scopes := []counterKey{{e.tenant, scopeAll()}, {e.tenant, scopeDep(e.deploymentID)}}
	return r.starts.do(r.db, &batchItem{ctx: ctx, scopes: scopes, apply: func(ctx context.Context, tx *store.Tx, pos []int64) error {
		// DO NOTHING: a taken idempotency key or schedule tick must not
		// abort the transaction the other executions of the batch share.
		res, err := tx.Exec(ctx, `INSERT INTO executions (id, tenant, deployment_id, status, trigger_type, trigger_data,
				started_at, owner, idempotency_key, request_hash, scheduled_at, pos_all, pos_dep, deployment_version, retry_of)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			e.id, e.tenant, e.deploymentID, statusRunning, e.triggerType, data,
			e.startedAt.UnixMicro(), ne.owner, idem, reqHash, sched, pos[0], pos[1], e.version, e.retryOf)
		if err != nil {
			return fmt.Errorf("insert execution: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errDuplicate
		}
		return nil
	}})
}

// finishExecution moves a running execution to its final status. It does
// nothing (errNotFound) when the execution is no longer running, e.g. it
// was marked interrupted by another replica meanwhile.
func (r *repo) finishExecution(ctx context.Context, e *execution) error {
	var output, result []byte
	var err error
	if e.output != nil {
		if output, err = proto.Marshal(e.output); err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
	}
	if e.result != nil {
		if result, err = proto.Marshal(e.result); err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
	}
	scopes := []counterKey{{e.tenant, scopeStatus(e.status)}, {e.tenant, scopeDepStatus(e.deploymentID, e.status)}}
	return r.finishes.do(r.db, &batchItem{ctx: ctx, scopes: scopes, apply: func(ctx context.Context, tx *store.Tx, pos []int64) error {
		res, err := tx.Exec(ctx, `UPDATE executions SET status = ?, output = ?, result = ?, error = ?, finished_at = ?,
				pos_st = ?, pos_dst = ?
			WHERE id = ? AND status = ?`,
			e.status, output, result, e.errText, e.finishedAt.UnixMicro(), pos[0], pos[1], e.id, statusRunning)
		if err != nil {
			return fmt.Errorf("finish execution: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return errNotFound // draws no positions
		}
		return nil
	}})
}

const executionCols = `id, tenant, deployment_id, status, trigger_type, trigger_data, output, error, started_at, finished_at, deployment_version, retry_of`

func scanExecution(row scanner, extra ...any) (*execution, error) {
	var (
		e            execution
		data, output []byte
		started      int64
		finished     sql.NullInt64
	)
	dest := append([]any{&e.id, &e.tenant, &e.deploymentID, &e.status, &e.triggerType, &data, &output, &e.errText, &started, &finished, &e.version, &e.retryOf}, extra...)
	err := row.Scan(dest...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("scan execution: %w", err)
	}
	e.triggerData = &structpb.Struct{}
	if err := proto.Unmarshal(data, e.triggerData); err != nil {
		return nil, fmt.Errorf("decode trigger data of %s: %w", e.id, err)
	}
	if output != nil {
		e.output = &structpb.Value{}
		if err := proto.Unmarshal(output, e.output); err != nil {
			return nil, fmt.Errorf("decode output of %s: %w", e.id, err)
		}
	}
	e.startedAt = time.UnixMicro(started).UTC()
	if finished.Valid {
		e.finishedAt = time.UnixMicro(finished.Int64).UTC()
	}
	return &e, nil
}

func (r *repo) getExecution(ctx context.Context, tenant, id string) (*execution, error) {
	if id == "" {
		return nil, errNotFound
	}
	var result []byte
	row := r.db.QueryRow(ctx, `SELECT `+executionCols+`, result FROM executions WHERE id = ? AND tenant = ?`, id, tenant)
	e, err := scanExecution(row, &result)
	if err != nil {
		return nil, err
	}
	if result != nil {
		e.result = &enginev1.ExecutionResult{}
		if err := proto.Unmarshal(result, e.result); err != nil {
			return nil, fmt.Errorf("decode result of %s: %w", e.id, err)
		}
	}
	return e, nil
}

// executionByKey finds the execution an idempotency key already started,
// with the hash of the request it came with ("" when not recorded).
func (r *repo) executionByKey(ctx context.Context, deploymentID, key string) (*execution, string, error) {
	var (
		id, tenant string
		hash       sql.NullString
	)
	err := r.db.QueryRow(ctx, `SELECT id, tenant, request_hash FROM executions WHERE deployment_id = ? AND idempotency_key = ?`,
		deploymentID, key).Scan(&id, &tenant, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, "", errNotFound
	}
	if err != nil {
		return nil, "", fmt.Errorf("find execution by idempotency key: %w", err)
	}
	e, err := r.getExecution(ctx, tenant, id)
	return e, hash.String, err
}

// runningOwners lists the processes that have executions running.
func (r *repo) runningOwners(ctx context.Context) ([]string, error) {
	rows, err := r.db.Query(ctx, `SELECT DISTINCT owner FROM executions WHERE status = ?`, statusRunning)
	if err != nil {
		return nil, fmt.Errorf("list running owners: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			return nil, fmt.Errorf("scan owner: %w", err)
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// runningOf lists the running executions of one owner.
func (r *repo) runningOf(ctx context.Context, owner string) ([]*execution, error) {
	rows, err := r.db.Query(ctx, `SELECT `+executionCols+` FROM executions WHERE status = ? AND owner = ?`, statusRunning, owner)
	if err != nil {
		return nil, fmt.Errorf("list running executions: %w", err)
	}
	defer rows.Close()
	var out []*execution
	for rows.Next() {
		e, err := scanExecution(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
