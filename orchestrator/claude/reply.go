package claude

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/m1-agent/m1/orchestrator"
)

// Values in a Messages reply: stop reasons, block types, the reply type.
const (
	stopEndTurn      = "end_turn"
	stopSequence     = "stop_sequence"
	stopToolUse      = "tool_use"
	stopMaxTokens    = "max_tokens"
	stopRefusal      = "refusal"
	blockText        = "text"
	blockToolUse     = "tool_use"
	replyTypeMessage = "message"
)

// reply is the part of a Messages reply the planner reads.
type reply struct {
	Type       string            `json:"type"`
	Content    []json.RawMessage `json:"content"`
	StopReason *string           `json:"stop_reason"`
}

type replyUsage struct {
	InputTokens              int64 `json:"input_tokens"`
	OutputTokens             int64 `json:"output_tokens"`
	CacheReadInputTokens     int64 `json:"cache_read_input_tokens"`
	CacheCreationInputTokens int64 `json:"cache_creation_input_tokens"`
}

// parseReply turns the body of a Messages reply into a step. requested is
// the model asked for, reported when the reply names none.
func parseReply(body []byte, requested string, names toolNames) (orchestrator.Step, error) {
	usage := usageOf(body, requested)
	fail := func(format string, args ...any) error {
		return &orchestrator.PlannerError{
			Err: fmt.Errorf("%w: claude: "+format, append([]any{orchestrator.ErrPlanner}, args...)...),
			LLM: usage,
		}
	}

	var r reply
	if err := json.Unmarshal(body, &r); err != nil {
		return orchestrator.Step{}, fail("malformed reply: %v", err)
	}
	switch {
	case r.Type != "" && r.Type != replyTypeMessage:
		return orchestrator.Step{}, fail("malformed reply: type %q, want %q", r.Type, replyTypeMessage)
	case r.Content == nil:
		return orchestrator.Step{}, fail("malformed reply: no content")
	case r.StopReason == nil || *r.StopReason == "":
		return orchestrator.Step{}, fail("malformed reply: no stop_reason")
	case usage == nil:
		return orchestrator.Step{}, fail("malformed reply: no usage, or negative token counts")
	}
	stop := *r.StopReason

	var texts []string
	var calls []orchestrator.Call
	ids := make(map[string]bool)
	for i, raw := range r.Content {
		var kind struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(raw, &kind); err != nil {
			return orchestrator.Step{}, fail("malformed reply: content block %d: %v", i, err)
		}
		switch kind.Type {
		case blockText:
			var b struct {
				Text string `json:"text"`
			}
			if err := json.Unmarshal(raw, &b); err != nil {
				return orchestrator.Step{}, fail("malformed reply: content block %d: %v", i, err)
			}
			if t := strings.TrimSpace(b.Text); t != "" {
				texts = append(texts, t)
			}
		case blockToolUse:
			var b struct {
				ID    string          `json:"id"`
				Name  string          `json:"name"`
				Input json.RawMessage `json:"input"`
			}
			if err := json.Unmarshal(raw, &b); err != nil {
				return orchestrator.Step{}, fail("malformed reply: content block %d: %v", i, err)
			}
			switch {
			case b.ID == "":
				return orchestrator.Step{}, fail("malformed reply: tool_use block %d has no id", i)
			case ids[b.ID]:
				return orchestrator.Step{}, fail("malformed reply: tool_use id %q repeated", b.ID)
			case !isObject(b.Input):
				return orchestrator.Step{}, fail("tool_use %q (%s): input is not a JSON object", b.ID, b.Name)
			}
			tool, ok := names.m1(b.Name)
			if !ok {
				return orchestrator.Step{}, fail("tool_use %q names unknown tool %q", b.ID, b.Name)
			}
			ids[b.ID] = true
			calls = append(calls, orchestrator.Call{ID: b.ID, Tool: tool, Args: b.Input})
		default:
			// Other blocks (thinking, server tools) say nothing the
			// operator must approve.
		}
	}
	text := strings.Join(texts, "\n\n")
	for i := range calls {
		calls[i].Reasoning = text
	}

	step := orchestrator.Step{Calls: calls, Text: text, LLM: usage}
	switch {
	case stop == stopRefusal:
		return orchestrator.Step{}, fail("Claude refused: %q", text)
	case len(calls) > 0:
		// A reply cut short (max_tokens) still carries whole tool_use
		// blocks; the run goes on after them.
		step.Done = stop == stopEndTurn || stop == stopSequence
	case stop == stopEndTurn || stop == stopSequence:
		step.Done = true
	case stop == stopMaxTokens:
		return orchestrator.Step{}, fail("reply cut at max_tokens before any tool call")
	default:
		return orchestrator.Step{}, fail("stop_reason %q without a tool call", stop)
	}
	return step, nil
}

// usageOf reads the usage of a reply, if it has one that makes sense, even
// when the rest is malformed: the tokens were paid for.
func usageOf(body []byte, requested string) []orchestrator.LLMUsage {
	var r struct {
		Model json.RawMessage `json:"model"`
		Usage json.RawMessage `json:"usage"`
	}
	if json.Unmarshal(body, &r) != nil {
		return nil
	}
	var u *replyUsage
	if json.Unmarshal(r.Usage, &u) != nil || u == nil {
		return nil
	}
	if u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadInputTokens < 0 || u.CacheCreationInputTokens < 0 {
		return nil
	}
	model := requested
	var m string
	if json.Unmarshal(r.Model, &m) == nil && m != "" {
		model = m
	}
	return []orchestrator.LLMUsage{{
		Model:            model,
		InputTokens:      u.InputTokens,
		OutputTokens:     u.OutputTokens,
		CacheReadTokens:  u.CacheReadInputTokens,
		CacheWriteTokens: u.CacheCreationInputTokens,
	}}
}
