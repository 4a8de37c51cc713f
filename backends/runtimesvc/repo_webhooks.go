package runtimesvc

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/flowgate/flowgate/backends/store"
)

// newNamespaceToken draws a tenant's webhook namespace: 128 random bits,
// so that a URL can be neither guessed nor enumerated.
func newNamespaceToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b[:])
}

// ensureNamespace returns the tenant's webhook namespace, creating it on
// first use; concurrent creators agree on the one that was stored first.
func ensureNamespace(ctx context.Context, tx *store.Tx, tenant string) (string, error) {
	if _, err := tx.Exec(ctx, `INSERT INTO webhook_namespaces (tenant, token) VALUES (?, ?) ON CONFLICT (tenant) DO NOTHING`,
		tenant, newNamespaceToken()); err != nil {
		return "", fmt.Errorf("create webhook namespace: %w", err)
	}
	var token string
	if err := tx.QueryRow(ctx, `SELECT token FROM webhook_namespaces WHERE tenant = ?`, tenant).Scan(&token); err != nil {
		return "", fmt.Errorf("read webhook namespace: %w", err)
	}
	return token, nil
}

// namespaceOf returns the tenant's webhook namespace, "" when it has none.
func (r *repo) namespaceOf(ctx context.Context, tenant string) (string, error) {
	var token string
	err := r.db.QueryRow(ctx, `SELECT token FROM webhook_namespaces WHERE tenant = ?`, tenant).Scan(&token)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read webhook namespace: %w", err)
	}
	return token, nil
}

// claimPath records the deployment's webhook path in its tenant's
// namespace (and fills in the namespace); errPathTaken when another of the
// tenant's deployments has it. Other tenants' paths never collide.
func claimPath(ctx context.Context, tx *store.Tx, d *deployment) error {
	wh := findTrigger(d.triggers, triggerWebhook)
	if wh == nil {
		return nil
	}
	ns, err := ensureNamespace(ctx, tx, d.tenant)
	if err != nil {
		return err
	}
	d.hookNS = ns
	if _, err := tx.Exec(ctx, `INSERT INTO webhook_routes (tenant, path, deployment_id) VALUES (?, ?, ?)`, d.tenant, wh.GetPath(), d.id); err != nil {
		if store.IsUniqueViolation(err) {
			return errPathTaken
		}
		return fmt.Errorf("insert webhook path: %w", err)
	}
	return nil
}

func releasePath(ctx context.Context, tx *store.Tx, deploymentID string) error {
	if _, err := tx.Exec(ctx, `DELETE FROM webhook_routes WHERE deployment_id = ?`, deploymentID); err != nil {
		return fmt.Errorf("release webhook path: %w", err)
	}
	return nil
}

// deploymentByHook finds the deployment owning a path in a namespace.
func (r *repo) deploymentByHook(ctx context.Context, ns, path string) (*deployment, error) {
	row := r.db.QueryRow(ctx, `SELECT d.seq, d.id, d.tenant, d.name, d.description, d.status, d.definition, d.triggers, d.created_at, d.updated_at, d.version
		FROM webhook_namespaces n
		JOIN webhook_routes w ON w.tenant = n.tenant
		JOIN deployments d ON d.id = w.deployment_id
		WHERE n.token = ? AND w.path = ?`, ns, path)
	d, _, err := scanDeployment(row)
	if err != nil {
		return nil, err
	}
	d.hookNS = ns
	return d, nil
}

// rememberSignature records a webhook signature accepted for a deployment
// until expires; fresh is false when it was recorded before, by any
// replica: the request is a replay.
func (r *repo) rememberSignature(ctx context.Context, deploymentID, signature string, expires time.Time) (fresh bool, err error) {
	res, err := r.db.Exec(ctx, `INSERT INTO webhook_signatures (deployment_id, signature, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (deployment_id, signature) DO NOTHING`, deploymentID, signature, expires.UnixMicro())
	if err != nil {
		return false, fmt.Errorf("record webhook signature: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("record webhook signature: %w", err)
	}
	return n == 1, nil
}

// pruneSignatures forgets signatures whose timestamps are too old to be
// accepted anyway.
func (r *repo) pruneSignatures(ctx context.Context, now time.Time) error {
	if _, err := r.db.Exec(ctx, `DELETE FROM webhook_signatures WHERE expires_at < ?`, now.UnixMicro()); err != nil {
		return fmt.Errorf("prune webhook signatures: %w", err)
	}
	return nil
}
