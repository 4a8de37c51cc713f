package backends

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	optionsv1 "github.com/flowgate/flowgate/gen/go/flowgate/options/v1"
	"github.com/flowgate/flowgate/interceptors"
)

// serviceIdentity is who the backends are when they call the engine for
// their own purposes: validating a deployment, running a triggered
// execution, checking an agent's draft. Calls that read or write a
// user's workflows are made as that user instead.
var serviceIdentity = interceptors.Identity{Subject: "flowgate-backends", Scopes: []string{"workflows:execute"}}

// newTokens checks the shared key. The backends refuse every call that
// does not carry a token signed with it.
func newTokens(key []byte) (*interceptors.BackendTokens, error) {
	if len(key) == 0 {
		return nil, errors.New("backends: Config.AuthKey is required: the key the gateway signs calls with")
	}
	tokens, err := interceptors.NewBackendTokens(key, nil)
	if err != nil {
		return nil, fmt.Errorf("backends: %w", err)
	}
	return tokens, nil
}

// accessRules reads the access rule every method of svc declares in
// proto/ (flowgate.options.v1.access), the same rules the gateway
// enforces.
func accessRules(svc protoreflect.ServiceDescriptor) map[string]interceptors.AccessRule {
	rules := map[string]interceptors.AccessRule{}
	methods := svc.Methods()
	for i := range methods.Len() {
		m := methods.Get(i)
		rule, _ := proto.GetExtension(m.Options(), optionsv1.E_Access).(*optionsv1.AccessRule)
		rules["/"+string(svc.FullName())+"/"+string(m.Name())] = interceptors.AccessRule{Scope: rule.GetScope(), Public: rule.GetPublic()}
	}
	return rules
}

// handlerOptions are the options of a service's handlers: tracing when on,
// authentication of the caller, its access rules, and for services that
// store what they are sent, the refusal of text the database cannot hold.
func (b *Backends) handlerOptions(tokens *interceptors.BackendTokens, svc protoreflect.ServiceDescriptor, stores bool) []connect.HandlerOption {
	var ics []connect.Interceptor
	if b.tracing != nil {
		ics = append(ics, b.tracing)
	}
	ics = append(ics, interceptors.NewBackendAuthInterceptor(tokens, accessRules(svc), stores))
	if stores {
		ics = append(ics, textGuard{})
	}
	return []connect.HandlerOption{connect.WithInterceptors(ics...)}
}

// textGuard refuses request messages with a NUL character in a string
// field: PostgreSQL text cannot hold one, and the caller must hear that
// its input was wrong (InvalidArgument naming the field), not that the
// service failed.
type textGuard struct{}

func (textGuard) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient {
			if err := checkText(req.Any()); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

func (textGuard) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (textGuard) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, guardedConn{conn})
	}
}

type guardedConn struct{ connect.StreamingHandlerConn }

func (c guardedConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return checkText(msg)
}

func checkText(msg any) error {
	m, ok := msg.(proto.Message)
	if !ok {
		return nil
	}
	field := nulField(m.ProtoReflect(), "")
	if field == "" {
		return nil
	}
	const reason = "must not contain NUL characters"
	err := connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, reason))
	if d, derr := connect.NewErrorDetail(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: reason}},
	}); derr == nil {
		err.AddDetail(d)
	}
	return err
}

// nulField returns the path of the first string field of m holding a NUL
// character, or "".
func nulField(m protoreflect.Message, prefix string) (found string) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		path := prefix + string(fd.Name())
		switch {
		case fd.IsList():
			list := v.List()
			for i := range list.Len() {
				if found = nulValue(fd, list.Get(i), fmt.Sprintf("%s[%d]", path, i)); found != "" {
					break
				}
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if strings.IndexByte(k.String(), 0) >= 0 {
					found = path
				} else {
					found = nulValue(fd.MapValue(), mv, path+"."+k.String())
				}
				return found == ""
			})
		default:
			found = nulValue(fd, v, path)
		}
		return found == ""
	})
	return found
}

func nulValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if strings.IndexByte(v.String(), 0) >= 0 {
			return path
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return nulField(v.Message(), path+".")
	}
	return ""
}
