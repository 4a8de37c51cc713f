package agent

import (
	"context"
	"errors"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
	"google.golang.org/protobuf/types/known/structpb"
)

// Roles of a conversation's turns.
const (
	RoleUser      = "user"
	RoleAssistant = "assistant"
)

// Turn is one message of a conversation.
type Turn struct {
	Role    string
	Content string
}

// Conversation is what a provider reasons over: the session's messages,
// oldest first, ending with the user's latest, and the workflow the session
// holds so far (nil for none).
type Conversation struct {
	Turns   []Turn
	Current *enginev1.WorkflowDefinition
}

// LastUser is the latest user message, "" when there is none.
func (c Conversation) LastUser() string {
	for i := len(c.Turns) - 1; i >= 0; i-- {
		if c.Turns[i].Role == RoleUser {
			return c.Turns[i].Content
		}
	}
	return ""
}

// Plan is a workflow a provider proposes, ready to deploy.
type Plan struct {
	// Name is a short human readable name.
	Name string
	// Description says in a sentence what the workflow does.
	Description string
	// Definition is the workflow.
	Definition *enginev1.WorkflowDefinition
	// Triggers is what fires it (webhook, manual, schedule).
	Triggers []*runtimev1.Trigger
	// SampleInput is trigger data for a dry run of the workflow on the
	// engine; nil skips the dry run.
	SampleInput *structpb.Struct
}

// Provider is the reasoning behind chat and generation.
type Provider interface {
	// Reply streams the assistant's answer to the conversation's last user
	// message, calling emit with each piece as it is produced. An error
	// from emit must end the reply.
	Reply(ctx context.Context, conv Conversation, emit func(piece string) error) error
	// Plan turns the conversation into a workflow. problems lists what
	// validation found wrong with the previous attempt (empty at first),
	// so that a provider can repair its draft. A conversation that does
	// not yet say enough returns a [*NeedDetailsError].
	Plan(ctx context.Context, conv Conversation, problems []string) (*Plan, error)
}

// NeedDetailsError says that a conversation lacks what a workflow needs;
// Question asks the user for it.
type NeedDetailsError struct {
	Question string
}

func (e *NeedDetailsError) Error() string { return "more details needed: " + e.Question }

// needDetails reports whether err asks for details, and the question.
func needDetails(err error) (string, bool) {
	var nd *NeedDetailsError
	if errors.As(err, &nd) {
		return nd.Question, true
	}
	return "", false
}
