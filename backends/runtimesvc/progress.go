package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// progressDelay is how long a run goes before its progress is stored. Most
// runs end sooner: their node results are then stored once, with the
// outcome, and cost the database nothing more. A run still going after it,
// or one whose respond node has answered, has the nodes finished so far
// stored then, and each later one as it finishes.
const progressDelay = 100 * time.Millisecond

// progress follows one execution's run on the engine's stream.
type progress struct {
	s  *Service
	st *started

	mu     sync.Mutex
	nodes  []*enginev1.NodeResult // finished so far
	stored int                    // how many of nodes have progress rows
	over   bool                   // the run has ended: store nothing more
}

// run streams the workflow and returns its result. Node results are
// stored as they arrive once the run has gone on for progressDelay, so
// that a running execution's record shows its progress and, should this
// process die, what had completed; a respond node's answer goes to the
// waiting webhook caller at once.
func (p *progress) run(ctx context.Context, req *enginev1.StreamWorkflowRequest) (*enginev1.ExecutionResult, error) {
	began := time.Now()
	later := time.AfterFunc(progressDelay, func() { p.store(ctx, began) })
	defer func() {
		later.Stop()
		p.mu.Lock() // waits out a store in progress
		p.over = true
		p.mu.Unlock()
	}()
	stream, err := p.s.engine.StreamWorkflow(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var result *enginev1.ExecutionResult
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *enginev1.StreamWorkflowResponse_NodeFinished:
			p.mu.Lock()
			p.nodes = append(p.nodes, ev.NodeFinished)
			p.mu.Unlock()
			p.store(ctx, began)
		case *enginev1.StreamWorkflowResponse_Respond:
			// The caller answered early may read the execution at once:
			// its record shows what ran before the answer.
			p.store(ctx, time.Time{})
			p.st.respond(ev.Respond)
		case *enginev1.StreamWorkflowResponse_Result:
			result = ev.Result
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if result == nil {
		return nil, errors.New("the engine's stream ended without a result")
	}
	return result, nil
}

// store writes the node results not yet stored, once the run has gone on
// for progressDelay since began (a zero began: at once).
func (p *progress) store(ctx context.Context, began time.Time) {
	if time.Since(began) < progressDelay {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.over {
		return
	}
	// Progress is a view, not the outcome: a failed write is logged, tried
	// again with the next node, and the run goes on.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for ; p.stored < len(p.nodes); p.stored++ {
		res := p.nodes[p.stored]
		if err := p.s.repo.addNodeResult(storeCtx, p.st.e.id, p.stored+1, res); err != nil {
			p.s.logger.Warn("could not store a node result", "execution_id", p.st.e.id, "node", res.GetNodeId(), "error", err)
			return
		}
	}
}

// finished gives the node results of a run that has ended, and whether any
// were stored as progress rows.
func (p *progress) finished() ([]*enginev1.NodeResult, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nodes, p.stored > 0
}

func (r *repo) addNodeResult(ctx context.Context, executionID string, seq int, res *enginev1.NodeResult) error {
	data, err := proto.Marshal(res)
	if err != nil {
		return fmt.Errorf("encode node result: %w", err)
	}
	if _, err := r.db.Exec(ctx, `INSERT INTO execution_nodes (execution_id, seq, result) VALUES (?, ?, ?)`, executionID, seq, data); err != nil {
		return fmt.Errorf("store node result: %w", err)
	}
	return nil
}

// nodeResults reads the node results stored so far, in the order the
// nodes finished.
func (r *repo) nodeResults(ctx context.Context, executionID string) ([]*enginev1.NodeResult, error) {
	rows, err := r.db.Query(ctx, `SELECT result FROM execution_nodes WHERE execution_id = ? ORDER BY seq`, executionID)
	if err != nil {
		return nil, fmt.Errorf("read node results: %w", err)
	}
	defer rows.Close()
	var out []*enginev1.NodeResult
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("scan node result: %w", err)
		}
		res := &enginev1.NodeResult{}
		if err := proto.Unmarshal(data, res); err != nil {
			return nil, fmt.Errorf("decode node result of %s: %w", executionID, err)
		}
		out = append(out, res)
	}
	return out, rows.Err()
}

// dropNodeResults removes the progress rows of an execution whose full
// result is stored.
func (r *repo) dropNodeResults(ctx context.Context, executionID string) error {
	if _, err := r.db.Exec(ctx, `DELETE FROM execution_nodes WHERE execution_id = ?`, executionID); err != nil {
		return fmt.Errorf("remove node results: %w", err)
	}
	return nil
}

// releaseKey takes the idempotency key from an interrupted execution, so
// that the key can start a new attempt.
func (r *repo) releaseKey(ctx context.Context, executionID string) error {
	if _, err := r.db.Exec(ctx, `UPDATE executions SET idempotency_key = NULL WHERE id = ? AND status = ?`, executionID, statusInterrupted); err != nil {
		return fmt.Errorf("release idempotency key: %w", err)
	}
	return nil
}
