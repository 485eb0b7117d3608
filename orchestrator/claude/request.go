package claude

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/packages/param"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
)

// anyObject is the input schema of a tool that declares none.
const anyObject = `{"type":"object"}`

// request builds the Messages request for the next step of s.
func (p *Planner) request(s orchestrator.Session, names toolNames) (anthropic.MessageNewParams, error) {
	var tools []anthropic.ToolUnionParam // none: no "tools" at all
	for _, t := range s.Tools {
		schema := bytes.TrimSpace(t.InputSchema)
		if len(schema) == 0 {
			schema = []byte(anyObject)
		}
		if !isObject(schema) {
			return anthropic.MessageNewParams{}, fmt.Errorf("claude: tool %q: input schema is not a JSON object", t.Name)
		}
		tool := anthropic.ToolParam{
			Name:        names.api(t.Name),
			InputSchema: param.Override[anthropic.ToolInputSchemaParam](json.RawMessage(schema)),
		}
		if d := describe(t); d != "" {
			tool.Description = anthropic.String(d)
		}
		tools = append(tools, anthropic.ToolUnionParam{OfTool: &tool})
	}

	goal := "Goal:\n" + s.Goal
	if s.Agent != "" {
		goal = "Agent: " + s.Agent + "\n\n" + goal
	}
	msgs := []anthropic.MessageParam{anthropic.NewUserMessage(anthropic.NewTextBlock(goal))}
	for i, rec := range s.History {
		msgs = append(msgs, history(i+1, rec, names)...)
	}

	// Cache the prefix (tools and system prompt) and the conversation so
	// far: the next step re-sends both and reads them from the cache.
	system := anthropic.TextBlockParam{Text: p.system, CacheControl: anthropic.NewCacheControlEphemeralParam()}
	last := msgs[len(msgs)-1].Content
	if cc := last[len(last)-1].GetCacheControl(); cc != nil {
		*cc = anthropic.NewCacheControlEphemeralParam()
	}

	return anthropic.MessageNewParams{
		Model:     p.model,
		MaxTokens: p.maxTokens,
		System:    []anthropic.TextBlockParam{system},
		Messages:  msgs,
		Tools:     tools,
	}, nil
}

// describe is a tool's description for the model, with its risk.
func describe(t orchestrator.Tool) string {
	switch {
	case t.Risk == "":
		return t.Description
	case t.Description == "":
		return "Risk: " + t.Risk + "."
	default:
		return t.Description + " (risk: " + t.Risk + ")"
	}
}

// history replays step n: what the model said and proposed, then what
// became of each call.
func history(n int, rec orchestrator.StepRecord, names toolNames) []anthropic.MessageParam {
	var said []anthropic.ContentBlockParamUnion
	if rec.Text != "" {
		said = append(said, anthropic.NewTextBlock(rec.Text))
	}
	if len(rec.Calls) == 0 {
		if len(said) == 0 {
			return nil
		}
		return []anthropic.MessageParam{
			anthropic.NewAssistantMessage(said...),
			anthropic.NewUserMessage(anthropic.NewTextBlock("No tool call was proposed. Continue toward the goal, or stop if it is complete.")),
		}
	}
	results := make([]anthropic.ContentBlockParamUnion, 0, len(rec.Calls))
	for j, c := range rec.Calls {
		id := c.ID
		if !validID(id) {
			// Claude's ids are [A-Za-z0-9_-]+; this one only has to
			// match its tool_result within this request.
			id = "m1_" + strconv.Itoa(n) + "_" + strconv.Itoa(j+1)
		}
		args := json.RawMessage(c.Args)
		if !isObject(args) {
			args = json.RawMessage(`{}`)
		}
		said = append(said, anthropic.NewToolUseBlock(id, args, names.api(c.Tool)))
		var o orchestrator.Outcome
		if j < len(rec.Results) {
			o = rec.Results[j]
		}
		content, isError := outcome(o)
		results = append(results, anthropic.NewToolResultBlock(id, content, isError))
	}
	return []anthropic.MessageParam{anthropic.NewAssistantMessage(said...), anthropic.NewUserMessage(results...)}
}

// outcome is the tool_result text of a call's outcome, and whether it is
// an error.
func outcome(o orchestrator.Outcome) (string, bool) {
	result := string(bytes.TrimSpace(o.Result))
	switch o.Status {
	case store.ProposalExecuted:
		if result == "" {
			return "(the tool returned nothing)", false
		}
		return result, false
	case store.ProposalRejected:
		if o.Error == "" {
			return "rejected by the operator", true
		}
		return "rejected by the operator: " + o.Error, true
	case store.ProposalExpired:
		return "expired: no operator approved the call in time", true
	case store.ProposalFailed:
		msg := "failed"
		if o.Error != "" {
			msg += ": " + o.Error
		}
		if result != "" {
			msg += "\nresult: " + result
		}
		return msg, true
	case "":
		return "no outcome was recorded for this call", true
	default:
		msg := o.Status
		if o.Error != "" {
			msg += ": " + o.Error
		}
		return msg, true
	}
}

// isObject reports whether b is a JSON object.
func isObject(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) > 0 && b[0] == '{' && json.Valid(b)
}

// validID reports whether s can be a tool_use id.
func validID(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !apiNameByte(s[i]) {
			return false
		}
	}
	return true
}

func apiNameByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '_' || b == '-'
}

// maxAPIName is the longest tool name the Messages API accepts.
const maxAPIName = 64

// toolNames maps M1 tool names to the names Claude sees. Claude's are
// [A-Za-z0-9_-]{1,64}; M1's also allow '.' and up to 128 bytes, so a name
// like "fs.write" is sent as "fs_write". The mapping depends only on the
// session's tools, so every step of a run sees the same names.
type toolNames struct {
	toAPI map[string]string
	toM1  map[string]string
}

func newToolNames(tools []orchestrator.Tool) toolNames {
	n := toolNames{toAPI: make(map[string]string, len(tools)), toM1: make(map[string]string, len(tools))}
	// Names Claude accepts as they are keep them, whatever the order.
	for _, t := range tools {
		if len(t.Name) <= maxAPIName && validID(t.Name) {
			n.toAPI[t.Name], n.toM1[t.Name] = t.Name, t.Name
		}
	}
	for _, t := range tools {
		if _, ok := n.toAPI[t.Name]; ok {
			continue
		}
		base := sanitize(t.Name)
		name := base
		for i := 2; n.toM1[name] != ""; i++ {
			suffix := "_" + strconv.Itoa(i)
			name = base[:min(len(base), maxAPIName-len(suffix))] + suffix
		}
		n.toAPI[t.Name], n.toM1[name] = name, t.Name
	}
	return n
}

// api is the name Claude sees for the M1 tool name.
func (n toolNames) api(name string) string {
	if a, ok := n.toAPI[name]; ok {
		return a
	}
	return sanitize(name)
}

// m1 is the M1 tool name for the name Claude used, if it is a session tool.
func (n toolNames) m1(name string) (string, bool) {
	t, ok := n.toM1[name]
	return t, ok
}

// sanitize replaces the bytes Claude does not accept in a tool name with
// '_' and cuts it to maxAPIName.
func sanitize(name string) string {
	b := []byte(name)
	for i := range b {
		if !apiNameByte(b[i]) {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "_"
	}
	return string(b[:min(len(b), maxAPIName)])
}
