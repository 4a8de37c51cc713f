package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
)

// progress follows one execution's run on the engine's stream.
type progress struct {
	s     *Service
	st    *started
	nodes []*enginev1.NodeResult // finished so far
}

// run streams the workflow and returns its result. Each node's result is
// stored as it arrives, so that the execution's record shows its progress
// and, should this process die, what had completed; a respond node's
// answer goes to the waiting webhook caller at once.
func (p *progress) run(ctx context.Context, req *enginev1.StreamWorkflowRequest) (*enginev1.ExecutionResult, error) {
	stream, err := p.s.engine.StreamWorkflow(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	var result *enginev1.ExecutionResult
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *enginev1.StreamWorkflowResponse_NodeFinished:
			p.nodeFinished(ctx, ev.NodeFinished)
		case *enginev1.StreamWorkflowResponse_Respond:
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

func (p *progress) nodeFinished(ctx context.Context, res *enginev1.NodeResult) {
	p.nodes = append(p.nodes, res)
	// Progress is a view, not the outcome: a failed write is logged and
	// the run goes on.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.s.repo.addNodeResult(storeCtx, p.st.e.id, len(p.nodes), res); err != nil {
		p.s.logger.Warn("could not store a node result", "execution_id", p.st.e.id, "node", res.GetNodeId(), "error", err)
	}
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
