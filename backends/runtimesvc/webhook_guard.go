package runtimesvc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"slices"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

const (
	// signatureClockMargin keeps a signature remembered a little past its
	// tolerance window, for replicas whose clocks run ahead of the pruner's.
	signatureClockMargin = time.Minute
	// signaturePruneEvery is how often a process deletes expired signatures.
	signaturePruneEvery = time.Minute

	// reasonIdempotencyKeyReused is the ErrorInfo reason of an
	// Idempotency-Key sent again with a different request.
	reasonIdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED"
	errorDomain                = "runtime.flowgate"
)

// spendSignature accepts a verified signature once: it is remembered in
// the database until its timestamp leaves the tolerance window, so that a
// copy sent again, to any replica, is refused.
func (s *Service) spendSignature(ctx context.Context, deploymentID string, sig signature) error {
	fresh, err := s.repo.rememberSignature(ctx, deploymentID, sig.mac, sig.at.Add(s.tolerance+signatureClockMargin))
	if err != nil {
		return s.internal(ctx, "record webhook signature", err)
	}
	s.maybePruneSignatures(ctx)
	if !fresh {
		return unauthenticated("this webhook signature has already been used; sign each delivery, retries too, with a fresh timestamp")
	}
	return nil
}

// maybePruneSignatures deletes expired signatures at most once per
// signaturePruneEvery in this process; a failure only delays it.
func (s *Service) maybePruneSignatures(ctx context.Context) {
	now := time.Now()
	last := s.signaturesPruned.Load()
	if now.UnixNano()-last < int64(signaturePruneEvery) || !s.signaturesPruned.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	if err := s.repo.pruneSignatures(ctx, now); err != nil {
		s.logger.WarnContext(ctx, "could not prune webhook signatures", "error", err)
	}
}

// requestHash identifies a webhook request for its Idempotency-Key: the
// content type, the query and the body. Headers are left out, since a
// retry is re-signed with a new timestamp.
func requestHash(msg *runtimev1.TriggerWebhookRequest) string {
	h := sha256.New()
	writeField(h, []byte(msg.GetBody().GetContentType()))
	query := msg.GetQuery()
	keys := make([]string, 0, len(query))
	for k := range query {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		writeField(h, []byte(k))
		writeField(h, []byte(query[k]))
	}
	writeField(h, msg.GetBody().GetData())
	return hex.EncodeToString(h.Sum(nil))
}

// writeField writes b length-prefixed, so that no two field lists hash alike.
func writeField(h hash.Hash, b []byte) {
	_, _ = fmt.Fprintf(h, "%d:", len(b))
	_, _ = h.Write(b)
}

// keyReused answers an Idempotency-Key sent again with another request:
// returning the first request's result would hide that the second did not run.
func keyReused() *connect.Error {
	err := connect.NewError(connect.CodeFailedPrecondition,
		errors.New("this Idempotency-Key was already used with a different request; send a new key with a new request"))
	if detail, derr := connect.NewErrorDetail(&errdetails.ErrorInfo{
		Reason: reasonIdempotencyKeyReused, Domain: errorDomain,
	}); derr == nil {
		err.AddDetail(detail)
	}
	return err
}
