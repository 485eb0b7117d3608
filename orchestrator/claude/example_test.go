package claude_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/claude"
)

func Example() {
	// A stand-in for the Messages API; in production leave BaseURL empty.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"type":"message","model":"claude-sonnet-4-6","stop_reason":"tool_use",
			"content":[{"type":"text","text":"Let me see what is there."},
			           {"type":"tool_use","id":"toolu_01","name":"list_dir","input":{"path":"."}}],
			"usage":{"input_tokens":420,"output_tokens":48}}`)
	}))
	defer api.Close()

	opts := claude.DefaultOptions()
	opts.APIKey = "sk-ant-…" // from ANTHROPIC_API_KEY
	opts.BaseURL = api.URL
	p, err := claude.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	step, err := p.Next(context.Background(), orchestrator.Session{
		Agent: "agent-42",
		Goal:  "Summarise the workspace.",
		Tools: []orchestrator.Tool{{Name: "list_dir", Description: "List a directory.", Risk: "read"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, c := range step.Calls {
		fmt.Printf("%s %s %s: %s\n", c.ID, c.Tool, c.Args, c.Reasoning)
	}
	fmt.Printf("done=%v tokens=%d+%d\n", step.Done, step.LLM[0].InputTokens, step.LLM[0].OutputTokens)
	// Output:
	// toolu_01 list_dir {"path":"."}: Let me see what is there.
	// done=false tokens=420+48
}
