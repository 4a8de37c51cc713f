package apierr

import (
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// gatewayDomain is the ErrorInfo domain of the gateway's own marks.
const gatewayDomain = "flowgate"

// reasonTooLarge marks a ResourceExhausted error as being about size, so
// that REST callers get 413 rather than the 429 of a rate limit; RPC
// callers see the same mark in the error's details.
const reasonTooLarge = "PAYLOAD_TOO_LARGE"

// TooLarge is the ResourceExhausted error of a request over a size limit.
func TooLarge(err error) *connect.Error {
	return MarkTooLarge(connect.NewError(connect.CodeResourceExhausted, err))
}

// MarkTooLarge adds the size mark to ce (a ResourceExhausted error that
// a library raised for a size limit) and returns it.
func MarkTooLarge(ce *connect.Error) *connect.Error {
	if IsTooLarge(ce) {
		return ce
	}
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: reasonTooLarge, Domain: gatewayDomain}); err == nil {
		ce.AddDetail(d)
	}
	return ce
}

// IsTooLarge reports whether ce carries the size mark.
func IsTooLarge(ce *connect.Error) bool { return hasReason(ce, gatewayDomain, reasonTooLarge) }

// reasonUpstreamTooLarge marks a ResourceExhausted error as an upstream's
// answer larger than the gateway holds: the upstream's fault, a bad
// gateway to REST callers.
const reasonUpstreamTooLarge = "UPSTREAM_RESPONSE_TOO_LARGE"

// UpstreamTooLarge is the error of an upstream response over the limit.
func UpstreamTooLarge(err error) *connect.Error {
	return mark(connect.NewError(connect.CodeResourceExhausted, err), gatewayDomain, reasonUpstreamTooLarge)
}

// reasonUpstreamRefused marks an Unavailable error as a call the gateway
// did not send because its upstream is ejected or full: 503 to REST
// callers, with Retry-After, where an unreachable upstream is 502.
const reasonUpstreamRefused = "UPSTREAM_UNAVAILABLE"

// UpstreamRefused is the error of a call the gateway did not send.
func UpstreamRefused(err error) *connect.Error {
	return mark(connect.NewError(connect.CodeUnavailable, err), gatewayDomain, reasonUpstreamRefused)
}

// The runtime's mark of an Idempotency-Key sent again with another request.
const (
	runtimeDomain              = "runtime.flowgate"
	reasonIdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED"
)

func mark(ce *connect.Error, domain, reason string) *connect.Error {
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: reason, Domain: domain}); err == nil {
		ce.AddDetail(d)
	}
	return ce
}

// hasReason reports whether ce carries an ErrorInfo of domain and reason.
func hasReason(ce *connect.Error, domain, reason string) bool {
	for _, d := range ce.Details() {
		if d.Type() != "google.rpc.ErrorInfo" {
			continue
		}
		if v, err := d.Value(); err == nil {
			if info, ok := v.(*errdetails.ErrorInfo); ok && info.GetDomain() == domain && info.GetReason() == reason {
				return true
			}
		}
	}
	return false
}

// publicError is a message written for callers.
type publicError struct{ msg string }

func (e publicError) Error() string { return e.msg }

// Public is an error whose message was written for callers and may be
// shown even when it reports a server-side failure (which [FromError]
// otherwise replaces with a generic message).
func Public(msg string) error { return publicError{msg: msg} }

// IsPublic reports whether err's message was written for callers.
func IsPublic(err error) bool {
	var public publicError
	return errors.As(err, &public)
}
