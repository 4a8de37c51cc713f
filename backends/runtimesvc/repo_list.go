package runtimesvc

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// executionFilter selects the executions of a listing.
type executionFilter struct {
	tenant       string
	deploymentID string
	status       string
}

func (f executionFilter) key() string { return "executions:" + f.deploymentID + ":" + f.status }

// ordering is how a listing is numbered: the position column that is dense
// within the filtered group, and the counter scope that holds its size.
type ordering struct {
	column string
	scope  string
}

// orderingFor picks the dense position column of the filter. With a final
// status the positions are given when an execution reaches that status, so
// "newest first" means most recently finished first there; running
// executions have no dense position (they leave the group) and are listed
// by start sequence with plain skipping, which their small number allows.
func orderingFor(f executionFilter) (ordering, bool) {
	switch {
	case f.status == statusRunning:
		return ordering{}, false
	case f.status != "" && f.deploymentID != "":
		return ordering{column: "pos_dst", scope: scopeDepStatus(f.deploymentID, f.status)}, true
	case f.status != "":
		return ordering{column: "pos_st", scope: scopeStatus(f.status)}, true
	case f.deploymentID != "":
		return ordering{column: "pos_dep", scope: scopeDep(f.deploymentID)}, true
	default:
		return ordering{column: "pos_all", scope: scopeAll()}, true
	}
}

type executionPage struct {
	items []*execution
	total int64
	next  string
}

// listExecutions reads one page, newest first. Page N is found by position:
// positions are dense 1..n within the group (n from the counter), so page N
// starts at n-(N-1)*size and the query is an index range scan whatever N is.
// A cursor continues below the last position seen, which keeps a client's
// walk free of duplicates and gaps while new executions arrive on top.
func (r *repo) listExecutions(ctx context.Context, f executionFilter, pg paging) (*executionPage, error) {
	ord, dense := orderingFor(f)
	if !dense {
		return r.listRunning(ctx, f, pg)
	}
	if pg.cursor != nil && pg.cursor.Order != ord.column {
		return nil, invalid("page_token", "is not a token from this listing")
	}
	var total int64
	err := r.db.QueryRow(ctx, `SELECT n FROM execution_counters WHERE tenant = ? AND scope = ?`, f.tenant, ord.scope).Scan(&total)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("count executions: %w", err)
	}
	top := total - pg.offset()
	if pg.cursor != nil {
		top = pg.cursor.After - 1
	}
	out := &executionPage{total: total}
	if top < 1 {
		return out, nil
	}
	where, args := f.where()
	q := `SELECT ` + executionCols + `, ` + ord.column + ` FROM executions WHERE ` + where +
		` AND ` + ord.column + ` <= ? ORDER BY ` + ord.column + ` DESC LIMIT ?`
	args = append(args, top, pg.size)
	if err := r.collect(ctx, out, q, args); err != nil {
		return nil, err
	}
	if n := len(out.items); n == int(pg.size) && out.items[n-1].pos > 1 {
		out.next = encodeCursor(f.key(), pg.page+1, ord.column, out.items[n-1].pos)
	}
	return out, nil
}

func (f executionFilter) where() (string, []any) {
	where, args := `tenant = ?`, []any{f.tenant}
	if f.deploymentID != "" {
		where += ` AND deployment_id = ?`
		args = append(args, f.deploymentID)
	}
	if f.status != "" {
		where += ` AND status = ?`
		args = append(args, f.status)
	}
	return where, args
}

// listRunning pages through running executions by start sequence.
func (r *repo) listRunning(ctx context.Context, f executionFilter, pg paging) (*executionPage, error) {
	if pg.cursor != nil && pg.cursor.Order != "seq" {
		return nil, invalid("page_token", "is not a token from this listing")
	}
	where, args := f.where()
	out := &executionPage{}
	if err := r.db.QueryRow(ctx, `SELECT COUNT(*) FROM executions WHERE `+where, args...).Scan(&out.total); err != nil {
		return nil, fmt.Errorf("count running executions: %w", err)
	}
	q := `SELECT ` + executionCols + `, seq FROM executions WHERE ` + where
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
	if err := r.collect(ctx, out, q, args); err != nil {
		return nil, err
	}
	if len(out.items) > int(pg.size) {
		out.items = out.items[:pg.size]
		out.next = encodeCursor(f.key(), pg.page+1, "seq", out.items[pg.size-1].pos)
	}
	return out, nil
}

func (r *repo) collect(ctx context.Context, out *executionPage, q string, args []any) error {
	rows, err := r.db.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("list executions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var pos int64
		e, err := scanExecution(rows, &pos)
		if err != nil {
			return err
		}
		e.pos = pos
		out.items = append(out.items, e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list executions: %w", err)
	}
	return nil
}
