package engine

import (
	"fmt"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
)

// fieldError is a validation failure of one field of the request.
type fieldError struct {
	Field  string // snake_case path, e.g. workflow_definition.nodes[1].parameters.url
	Reason string
}

func (e *fieldError) Error() string { return e.Field + ": " + e.Reason }

func fieldErrorf(field, format string, args ...any) *fieldError {
	return &fieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// invalidArgument turns a field error into the InvalidArgument error every
// backend returns: the message names the field, and a google.rpc.BadRequest
// detail carries it for the gateway's REST error shape.
func invalidArgument(fe *fieldError) *connect.Error {
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid %s: %s", fe.Field, fe.Reason))
	detail, detailErr := connect.NewErrorDetail(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{
			Field:       fe.Field,
			Description: fe.Reason,
		}},
	})
	if detailErr == nil {
		err.AddDetail(detail)
	}
	return err
}
