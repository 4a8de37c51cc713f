package runtimesvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// invalid is an InvalidArgument error whose google.rpc.BadRequest detail
// names the field, as the gateway's REST error shape expects.
func invalid(field, format string, args ...any) *connect.Error {
	reason := fmt.Sprintf(format, args...)
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid %s: %s", field, reason))
	if detail, derr := connect.NewErrorDetail(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}},
	}); derr == nil {
		err.AddDetail(detail)
	}
	return err
}

func notFound(what, id string) *connect.Error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %q not found", what, id))
}

// internal logs err and returns an error that says nothing of it.
func (s *Service) internal(ctx context.Context, op string, err error) *connect.Error {
	var cerr *connect.Error
	if errors.As(err, &cerr) {
		return cerr
	}
	switch {
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	}
	s.logger.LogAttrs(ctx, slog.LevelError, "runtime operation failed", slog.String("op", op), slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}
