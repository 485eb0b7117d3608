package claude

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/m1-agent/m1/orchestrator"
)

func FuzzParseReply(f *testing.F) {
	f.Add([]byte(`{"type":"message","model":"m","stop_reason":"tool_use","content":[{"type":"text","text":"t"},{"type":"tool_use","id":"a","name":"read_file","input":{"p":1}}],"usage":{"input_tokens":1,"output_tokens":2}}`))
	f.Add([]byte(`{"type":"message","stop_reason":"end_turn","content":[],"usage":{"input_tokens":1,"output_tokens":2,"cache_read_input_tokens":3,"cache_creation_input_tokens":4}}`))
	f.Add([]byte(`{"content":"x"}`))
	names := newToolNames([]orchestrator.Tool{{Name: "read_file"}, {Name: "fs.write"}})
	f.Fuzz(func(t *testing.T, body []byte) {
		step, err := parseReply(body, "requested", names)
		if err != nil {
			var pe *orchestrator.PlannerError
			if !errors.As(err, &pe) || !errors.Is(err, orchestrator.ErrPlanner) {
				t.Fatalf("parseReply error = %v, want a *PlannerError wrapping ErrPlanner", err)
			}
			return
		}
		if len(step.LLM) != 1 {
			t.Fatalf("step.LLM = %+v, want one usage", step.LLM)
		}
		if !step.Done && len(step.Calls) == 0 {
			t.Fatalf("step not done and without calls")
		}
		for _, c := range step.Calls {
			var v map[string]any
			if c.Tool != "read_file" && c.Tool != "fs.write" || json.Unmarshal(c.Args, &v) != nil || v == nil {
				t.Fatalf("call %+v: unknown tool or args not an object", c)
			}
		}
	})
}
