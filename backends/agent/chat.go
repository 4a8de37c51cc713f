package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"

	agentv1 "github.com/flowgate/flowgate/gen/go/workflow/agent/v1"
)

// maxUserMessage bounds one user message, in characters.
const maxUserMessage = 8000

// Chat records the user's message, streams the assistant's reply as the
// provider produces it, records the reply, and starts a generation from
// the conversation (its progress is watched with WatchGeneration).
func (s *Service) Chat(ctx context.Context, req *connect.Request[agentv1.ChatRequest], stream *connect.ServerStream[agentv1.ChatResponse]) error {
	id := identityOf(req.Header())
	text := strings.TrimSpace(req.Msg.GetUserMessage())
	if err := checkMessage(text); err != nil {
		return err
	}
	sess, err := s.openSession(ctx, id, req.Msg.GetSessionId())
	if err != nil {
		return err
	}
	conv, err := s.conversation(ctx, sess)
	if err != nil {
		return internalError(s.logger, "load conversation", err)
	}
	if err := s.store.appendTurn(ctx, sess.key, turn{role: RoleUser, content: text}); err != nil {
		return internalError(s.logger, "record message", err)
	}
	conv.Turns = append(conv.Turns, Turn{Role: RoleUser, Content: text})
	// The conversation now says something new: generate from it whatever
	// becomes of this reply (a browser may leave mid-reply).
	defer s.startGeneration(sess.key, id)

	var reply strings.Builder
	replyErr := s.provider.Reply(ctx, conv, func(piece string) error {
		if piece == "" {
			return nil
		}
		reply.WriteString(piece)
		return stream.Send(&agentv1.ChatResponse{Type: "message", Content: piece})
	})
	if reply.Len() > 0 {
		// Keep what the user saw even when the stream was cut short.
		if err := s.store.appendTurn(context.WithoutCancel(ctx), sess.key, turn{role: RoleAssistant, content: reply.String()}); err != nil {
			return internalError(s.logger, "record reply", err)
		}
	}
	switch {
	case replyErr == nil:
		return nil
	case ctx.Err() != nil:
		return connect.NewError(connect.CodeCanceled, ctx.Err())
	default:
		var ce *connect.Error
		if errors.As(replyErr, &ce) {
			return ce
		}
		s.logger.Warn("agent: provider failed to reply", "session", sess.key.id, "error", replyErr)
		return connect.NewError(connect.CodeUnavailable, errors.New("the assistant could not answer; try again"))
	}
}

func checkMessage(text string) error {
	switch {
	case text == "":
		return invalid("user_message", "is required")
	case !utf8.ValidString(text):
		return invalid("user_message", "must be UTF-8 text")
	case utf8.RuneCountInString(text) > maxUserMessage:
		return invalid("user_message", fmt.Sprintf("must be at most %d characters", maxUserMessage))
	}
	return nil
}
