package agent

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/flowgate/flowgate/backends/store"
)

// migrations of the agent's tables; append-only (see package store).
func migrations(d store.Dialect) []string {
	return []string{
		`CREATE TABLE agent_sessions (
			tenant TEXT NOT NULL,
			id TEXT NOT NULL,
			action TEXT NOT NULL,
			workflow_id TEXT NOT NULL,
			definition TEXT NOT NULL,
			created_at BIGINT NOT NULL,
			updated_at BIGINT NOT NULL,
			PRIMARY KEY (tenant, id))`,
		`CREATE TABLE agent_messages (
			id ` + d.SerialPrimaryKey() + `,
			tenant TEXT NOT NULL,
			session_id TEXT NOT NULL,
			role TEXT NOT NULL,
			content TEXT NOT NULL,
			created_at BIGINT NOT NULL)`,
		`CREATE INDEX agent_messages_by_session ON agent_messages (tenant, session_id, id)`,
		`CREATE TABLE agent_events (
			id ` + d.SerialPrimaryKey() + `,
			tenant TEXT NOT NULL,
			session_id TEXT NOT NULL,
			type TEXT NOT NULL,
			workflow_id TEXT NOT NULL,
			data TEXT NOT NULL,
			created_at BIGINT NOT NULL)`,
		`CREATE INDEX agent_events_by_session ON agent_events (tenant, session_id, id)`,
	}
}

// errNoSession is returned for a session that does not exist in the
// caller's tenant (another tenant's sessions are indistinguishable from
// absent ones).
var errNoSession = errors.New("session not found")

// sessionKey identifies a session across tenants.
type sessionKey struct{ tenant, id string }

// session is a stored session row.
type session struct {
	key        sessionKey
	action     string
	workflowID string // edit: the deployment being edited; later the last deployment made
	definition string // protojson of the current workflow, "" for none
	createdAt  time.Time
}

// turn is one stored chat message.
type turn struct {
	role    string
	content string
}

// storedEvent is one stored generation event; id is its event_id.
type storedEvent struct {
	id         int64
	typ        string
	workflowID string
	data       string // JSON object, "" for none
}

type sessionStore struct{ db *store.DB }

func openSessionStore(ctx context.Context, db *store.DB) (*sessionStore, error) {
	if err := db.Migrate(ctx, "agent", migrations(db.Dialect())); err != nil {
		return nil, fmt.Errorf("agent: migrate: %w", err)
	}
	return &sessionStore{db: db}, nil
}

func micros(t time.Time) int64 { return t.UnixMicro() }

func (st *sessionStore) createSession(ctx context.Context, s *session) error {
	now := micros(s.createdAt)
	_, err := st.db.Exec(ctx,
		`INSERT INTO agent_sessions (tenant, id, action, workflow_id, definition, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		s.key.tenant, s.key.id, s.action, s.workflowID, s.definition, now, now)
	if err != nil {
		return fmt.Errorf("insert session: %w", err)
	}
	return nil
}

func (st *sessionStore) session(ctx context.Context, key sessionKey) (*session, error) {
	s := &session{key: key}
	var created int64
	err := st.db.QueryRow(ctx,
		`SELECT action, workflow_id, definition, created_at FROM agent_sessions WHERE tenant = ? AND id = ?`,
		key.tenant, key.id).Scan(&s.action, &s.workflowID, &s.definition, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoSession
	}
	if err != nil {
		return nil, fmt.Errorf("read session: %w", err)
	}
	s.createdAt = time.UnixMicro(created)
	return s, nil
}

// saveWorkflow records the session's current workflow and its deployment.
func (st *sessionStore) saveWorkflow(ctx context.Context, key sessionKey, definition, workflowID string) error {
	_, err := st.db.Exec(ctx,
		`UPDATE agent_sessions SET definition = ?, workflow_id = ?, updated_at = ? WHERE tenant = ? AND id = ?`,
		definition, workflowID, micros(time.Now()), key.tenant, key.id)
	if err != nil {
		return fmt.Errorf("update session: %w", err)
	}
	return nil
}

func (st *sessionStore) appendTurn(ctx context.Context, key sessionKey, t turn) error {
	_, err := st.db.Exec(ctx,
		`INSERT INTO agent_messages (tenant, session_id, role, content, created_at) VALUES (?, ?, ?, ?, ?)`,
		key.tenant, key.id, t.role, t.content, micros(time.Now()))
	if err != nil {
		return fmt.Errorf("insert message: %w", err)
	}
	return nil
}

// maxHistory bounds the conversation handed to a provider.
const maxHistory = 200

func (st *sessionStore) turns(ctx context.Context, key sessionKey) ([]turn, error) {
	rows, err := st.db.Query(ctx,
		`SELECT role, content FROM (SELECT id, role, content FROM agent_messages WHERE tenant = ? AND session_id = ? ORDER BY id DESC LIMIT ?) recent ORDER BY id`,
		key.tenant, key.id, maxHistory)
	if err != nil {
		return nil, fmt.Errorf("read messages: %w", err)
	}
	defer rows.Close()
	var out []turn
	for rows.Next() {
		var t turn
		if err := rows.Scan(&t.role, &t.content); err != nil {
			return nil, fmt.Errorf("read message: %w", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read messages: %w", err)
	}
	return out, nil
}

// appendEvent stores an event and returns its id, which increases with
// every event of every session.
func (st *sessionStore) appendEvent(ctx context.Context, key sessionKey, e storedEvent) (int64, error) {
	var id int64
	err := st.db.QueryRow(ctx,
		`INSERT INTO agent_events (tenant, session_id, type, workflow_id, data, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
		key.tenant, key.id, e.typ, e.workflowID, e.data, micros(time.Now())).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("insert event: %w", err)
	}
	return id, nil
}

// eventPage is how many events a watcher reads at a time.
const eventPage = 100

func (st *sessionStore) eventsAfter(ctx context.Context, key sessionKey, after int64) ([]storedEvent, error) {
	rows, err := st.db.Query(ctx,
		`SELECT id, type, workflow_id, data FROM agent_events WHERE tenant = ? AND session_id = ? AND id > ? ORDER BY id LIMIT ?`,
		key.tenant, key.id, after, eventPage)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	var out []storedEvent
	for rows.Next() {
		var e storedEvent
		if err := rows.Scan(&e.id, &e.typ, &e.workflowID, &e.data); err != nil {
			return nil, fmt.Errorf("read event: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return out, nil
}
