package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	enginev1 "github.com/flowgate/flowgate/gen/go/workflow/engine/v1"
	runtimev1 "github.com/flowgate/flowgate/gen/go/workflow/runtime/v1"
)

// OpenAIConfig configures a [OpenAI] provider.
type OpenAIConfig struct {
	// BaseURL is the API's base, e.g. "https://api.openai.com/v1"; the
	// provider posts to BaseURL + "/chat/completions". Required.
	BaseURL string
	// APIKey is sent as a bearer token; empty sends none (local servers).
	APIKey string
	// Model names the model. Required.
	Model string
	// HTTPClient makes the calls; nil uses a client with no overall
	// timeout (replies stream) and a 30s response-header timeout.
	HTTPClient *http.Client
	// Timeout bounds one call, streaming included. Default 2 minutes.
	Timeout time.Duration
}

// OpenAI is a [Provider] backed by any OpenAI-compatible chat-completions
// API: replies stream token by token; plans come back as JSON that is
// decoded into a workflow and repaired with the engine's findings.
type OpenAI struct {
	endpoint string
	apiKey   string
	model    string
	client   *http.Client
	timeout  time.Duration
}

var _ Provider = (*OpenAI)(nil)

// maxProviderBody bounds what is read of one response.
const maxProviderBody = 1 << 20

// NewOpenAI validates cfg.
func NewOpenAI(cfg OpenAIConfig) (*OpenAI, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("agent: OpenAI base URL %q must be an http or https URL", cfg.BaseURL)
	}
	if strings.TrimSpace(cfg.Model) == "" {
		return nil, errors.New("agent: OpenAI model is required")
	}
	p := &OpenAI{
		endpoint: strings.TrimSuffix(u.String(), "/") + "/chat/completions",
		apiKey:   cfg.APIKey,
		model:    cfg.Model,
		client:   cfg.HTTPClient,
		timeout:  cfg.Timeout,
	}
	if p.client == nil {
		p.client = &http.Client{Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			ResponseHeaderTimeout: 30 * time.Second,
			ForceAttemptHTTP2:     true,
		}}
	}
	if p.timeout <= 0 {
		p.timeout = 2 * time.Minute
	}
	return p, nil
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatRequest struct {
	Model          string         `json:"model"`
	Messages       []chatMessage  `json:"messages"`
	Stream         bool           `json:"stream"`
	Temperature    float64        `json:"temperature"`
	ResponseFormat map[string]any `json:"response_format,omitempty"`
}

const replyPrompt = `You are the assistant of a workflow automation tool. The user describes a workflow: what starts it (a webhook, a cron schedule, or a manual run), conditions, and actions (HTTP requests, delays, responses to the webhook caller). Answer briefly: restate the workflow you will build, step by step, or ask for the specific detail that is missing (for example the URL to call or the field to compare). Never claim something was deployed; a separate step builds, validates and deploys it.`

// Reply streams the model's answer.
func (p *OpenAI) Reply(ctx context.Context, conv Conversation, emit func(string) error) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	resp, err := p.call(ctx, chatRequest{Model: p.model, Messages: messagesFor(replyPrompt, conv, nil), Stream: true, Temperature: 0.2})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return readStream(resp.Body, emit)
}

// readStream reads an OpenAI server-sent event stream and emits each
// content delta.
func readStream(body io.Reader, emit func(string) error) error {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 4096), maxProviderBody)
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data:")
		if !ok {
			continue // comments, event names, blank separators
		}
		data = strings.TrimSpace(data)
		if data == "[DONE]" {
			return nil
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return fmt.Errorf("openai: undecodable stream chunk: %w", err)
		}
		if chunk.Error != nil {
			return fmt.Errorf("openai: stream error: %s", chunk.Error.Message)
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" {
				if err := emit(c.Delta.Content); err != nil {
					return err
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("openai: reading stream: %w", err)
	}
	return errors.New("openai: stream ended without [DONE]")
}

func (p *OpenAI) call(ctx context.Context, body chatRequest) (*http.Response, error) {
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("openai: encode request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("openai: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if body.Stream {
		req.Header.Set("Accept", "text/event-stream")
	}
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("openai: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		var apiErr struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		detail := strings.TrimSpace(string(msg))
		if json.Unmarshal(msg, &apiErr) == nil && apiErr.Error.Message != "" {
			detail = apiErr.Error.Message
		}
		return nil, fmt.Errorf("openai: HTTP %d: %s", resp.StatusCode, detail)
	}
	return resp, nil
}

func messagesFor(system string, conv Conversation, extra []chatMessage) []chatMessage {
	out := []chatMessage{{Role: "system", Content: system}}
	if conv.Current != nil {
		def, _ := protojson.MarshalOptions{UseProtoNames: true}.Marshal(conv.Current)
		out = append(out, chatMessage{Role: "system", Content: "The workflow as it is now (JSON): " + string(def)})
	}
	for _, t := range conv.Turns {
		role := t.Role
		if role != RoleUser && role != RoleAssistant {
			continue
		}
		out = append(out, chatMessage{Role: role, Content: t.Content})
	}
	return append(out, extra...)
}

const planPrompt = `Turn the conversation into a workflow. Answer with one JSON object only:
{"status":"ready","name":"...","description":"...","trigger":{"type":"webhook|schedule|manual","path":"url-safe-name (webhook)","response_mode":"async|wait (webhook)","cron":"5-field cron (schedule)"},"workflow_definition":{"name":"...","nodes":[{"id":"...","type":"...","name":"...","parameters":{...}}],"connections":[{"source":"id","target":"id","branch":"true|false (only from a condition)"}]},"sample_input":{...trigger data for a dry run...}}
or, when the conversation does not say enough, {"status":"need_details","question":"what to ask the user"}.
Node types and parameters:
- trigger (exactly one, first): {"source":"webhook|schedule|manual"}
- set: {"values":{"field":"value or {{ expression }}"},"keep_input":true}
- condition: {"expression":"expr-lang boolean expression"}; connect its outputs with branch "true" and "false"
- http_request: {"method":"GET|POST|PUT|PATCH|DELETE","url":"https://...","headers":{},"body":"{{ expression }}"}
- delay: {"duration":"30s"} (at most 5m)
- merge: {"mode":"append|merge_objects"}
- respond (webhook with response_mode wait): {"status_code":200,"body":"..."}
Expressions see trigger (a webhook's trigger data is {"body":<JSON body>,"headers":{},"query":{}}), input (the previous node's output) and nodes (outputs by node id). A string that is exactly "{{ expression }}" takes the expression's value. Never invent URLs or fields the user did not give: ask instead.`

// planReply is the JSON a model answers a plan request with.
type planReply struct {
	Status      string          `json:"status"`
	Question    string          `json:"question"`
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Trigger     json.RawMessage `json:"trigger"`
	Definition  json.RawMessage `json:"workflow_definition"`
	SampleInput json.RawMessage `json:"sample_input"`
}

// Plan asks the model for a workflow as JSON; problems from the previous
// attempt are sent along so the model can repair its draft.
func (p *OpenAI) Plan(ctx context.Context, conv Conversation, problems []string) (*Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var extra []chatMessage
	if len(problems) > 0 {
		extra = append(extra, chatMessage{Role: "user", Content: "Validation found these problems in your last draft; answer with a corrected JSON object:\n- " + strings.Join(problems, "\n- ")})
	}
	resp, err := p.call(ctx, chatRequest{
		Model:          p.model,
		Messages:       messagesFor(planPrompt, conv, extra),
		Temperature:    0,
		ResponseFormat: map[string]any{"type": "json_object"},
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var completion struct {
		Choices []struct {
			Message chatMessage `json:"message"`
		} `json:"choices"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxProviderBody)).Decode(&completion); err != nil {
		return nil, fmt.Errorf("openai: undecodable completion: %w", err)
	}
	if len(completion.Choices) == 0 {
		return nil, errors.New("openai: completion has no choices")
	}
	return decodePlan(completion.Choices[0].Message.Content)
}

func decodePlan(content string) (*Plan, error) {
	content = strings.TrimSpace(content)
	// Models sometimes fence JSON despite being asked not to.
	content = strings.TrimPrefix(strings.TrimPrefix(content, "```json"), "```")
	content = strings.TrimSpace(strings.TrimSuffix(content, "```"))
	var reply planReply
	if err := json.Unmarshal([]byte(content), &reply); err != nil {
		return nil, fmt.Errorf("openai: plan is not JSON: %w", err)
	}
	if reply.Status == "need_details" {
		q := strings.TrimSpace(reply.Question)
		if q == "" {
			q = "Could you describe the workflow in more detail: what starts it, what it checks and what it does?"
		}
		return nil, &NeedDetailsError{Question: q}
	}
	lenient := protojson.UnmarshalOptions{DiscardUnknown: true}
	plan := &Plan{Name: strings.TrimSpace(reply.Name), Description: strings.TrimSpace(reply.Description), Definition: &enginev1.WorkflowDefinition{}}
	if len(reply.Definition) == 0 {
		return nil, errors.New("openai: plan has no workflow_definition")
	}
	if err := lenient.Unmarshal(reply.Definition, plan.Definition); err != nil {
		return nil, fmt.Errorf("openai: plan's workflow_definition: %w", err)
	}
	if plan.Name == "" {
		plan.Name = plan.Definition.GetName()
	}
	if len(reply.Trigger) > 0 && string(reply.Trigger) != "null" {
		t := &runtimev1.Trigger{}
		if err := lenient.Unmarshal(reply.Trigger, t); err != nil {
			return nil, fmt.Errorf("openai: plan's trigger: %w", err)
		}
		t.Secret = "" // never taken from a model
		plan.Triggers = []*runtimev1.Trigger{t}
	}
	if len(reply.SampleInput) > 0 && string(reply.SampleInput) != "null" {
		s := &structpb.Struct{}
		if lenient.Unmarshal(reply.SampleInput, s) == nil {
			plan.SampleInput = s
		}
	}
	return plan, nil
}
