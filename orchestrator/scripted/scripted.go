// Package scripted is an orchestrator.Planner that replays a plan written
// in YAML instead of asking a model: for demos, tests and rehearsals of the
// approval flow, with no API key and no cost.
//
// A plan is a list of steps; each step proposes one or more tool calls:
//
//	# plan.yaml
//	model: claude-sonnet-4-6        # optional: usage is reported under this model
//	steps:
//	  - text: "I will look around first."
//	    usage: {input_tokens: 1200, output_tokens: 150, cache_read_tokens: 0, cache_write_tokens: 0}   # optional, simulated
//	    calls:
//	      - tool: list_dir
//	        args: {path: "."}
//	        reasoning: "See what is in the workspace."
//	  - calls:
//	      - tool: write_file
//	        args: {path: notes.txt, content: "hello"}
//	        reasoning: "Record the finding."
//
// Fields:
//
//   - model: the model the simulated usage is reported under; default
//     "scripted" (which costs nothing).
//   - steps: at least one. Each step has text (what the planner says),
//     calls, and optionally usage: input_tokens, output_tokens,
//     cache_read_tokens, cache_write_tokens (non-negative integers), reported
//     as one model call of the step. Every step but the last needs at
//     least one call; the last may have none (a closing remark).
//   - calls: tool (a tool name, [A-Za-z0-9_.-]{1,128}), args (a mapping
//     with string keys; absent means {}), reasoning (shown to the operator).
//
// Unknown fields are errors. Args become a JSON object with the keys in the
// order written and YAML numbers, booleans and nulls as JSON ones; anchors
// and aliases are followed, merge keys (<<) are refused, and so are
// integers that a double cannot hold exactly, .inf, .nan, nesting deeper
// than 64 and args over 1 MiB of JSON (m1-authz would deny such a call).
//
// Step n of the plan (1-based) is the answer to the n-th Next of a run, that
// is, when the run has n-1 earlier steps, whatever their outcomes (a
// rejected call does not change the plan). The last step is Done; a Next
// after it answers Done with no calls. Call n of step s has the ID
// "call_<s>_<n>".
package scripted

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"

	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/toolcall"
)

// DefaultModel is the model usage is reported under when the plan names
// none.
const DefaultModel = "scripted"

// Planner replays a plan. It is immutable and safe for concurrent use by
// several runs; each run follows the plan from its first step.
type Planner struct {
	name  string
	steps []step
}

var _ orchestrator.Planner = (*Planner)(nil)

type step struct {
	text  string
	calls []orchestrator.Call
	usage []orchestrator.LLMUsage
}

// The plan file as written.
type planDoc struct {
	Model string    `yaml:"model"`
	Steps []stepDoc `yaml:"steps"`
}

type stepDoc struct {
	Text  string    `yaml:"text"`
	Usage *usageDoc `yaml:"usage"`
	Calls []callDoc `yaml:"calls"`
}

type usageDoc struct {
	InputTokens      int64 `yaml:"input_tokens"`
	OutputTokens     int64 `yaml:"output_tokens"`
	CacheReadTokens  int64 `yaml:"cache_read_tokens"`
	CacheWriteTokens int64 `yaml:"cache_write_tokens"`
}

type callDoc struct {
	Tool      string    `yaml:"tool"`
	Args      yaml.Node `yaml:"args"`
	Reasoning string    `yaml:"reasoning"`
}

// Load reads and parses the plan file at path. Errors name the file, and
// the step and call at fault.
func Load(path string) (*Planner, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	return parse(path, data)
}

// Parse parses a plan. Errors name the step and call at fault.
func Parse(data []byte) (*Planner, error) {
	return parse("plan", data)
}

func parse(name string, data []byte) (*Planner, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc planDoc
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty plan", name)
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one YAML document", name)
	}
	if len(doc.Steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", name)
	}
	model := doc.Model
	if model == "" {
		model = DefaultModel
	}
	p := &Planner{name: name, steps: make([]step, len(doc.Steps))}
	for i, sd := range doc.Steps {
		where := name + ": step " + strconv.Itoa(i+1)
		if len(sd.Calls) == 0 && i < len(doc.Steps)-1 {
			return nil, fmt.Errorf("%s: no calls (only the last step may have none)", where)
		}
		st := step{text: sd.Text}
		if u := sd.Usage; u != nil {
			if u.InputTokens < 0 || u.OutputTokens < 0 || u.CacheReadTokens < 0 || u.CacheWriteTokens < 0 {
				return nil, fmt.Errorf("%s: usage: negative token count", where)
			}
			st.usage = []orchestrator.LLMUsage{{
				Model:            model,
				InputTokens:      u.InputTokens,
				OutputTokens:     u.OutputTokens,
				CacheReadTokens:  u.CacheReadTokens,
				CacheWriteTokens: u.CacheWriteTokens,
			}}
		}
		for j, cd := range sd.Calls {
			at := where + ", call " + strconv.Itoa(j+1)
			if !toolcall.ValidName(cd.Tool) {
				return nil, fmt.Errorf("%s: tool %q: want a name of 1 to 128 of [A-Za-z0-9_.-]", at, cd.Tool)
			}
			args, err := argsJSON(&cd.Args)
			if err != nil {
				return nil, fmt.Errorf("%s: args: %w", at, err)
			}
			st.calls = append(st.calls, orchestrator.Call{
				ID:        fmt.Sprintf("call_%d_%d", i+1, j+1),
				Tool:      cd.Tool,
				Args:      args,
				Reasoning: cd.Reasoning,
			})
		}
		p.steps[i] = st
	}
	return p, nil
}

// Next returns the plan's step number len(s.History)+1. It fails, with a
// *orchestrator.PlannerError wrapping orchestrator.ErrPlanner, when the
// step proposes a tool that is not in s.Tools.
func (p *Planner) Next(ctx context.Context, s orchestrator.Session) (orchestrator.Step, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Step{}, err
	}
	n := len(s.History)
	if n >= len(p.steps) {
		return orchestrator.Step{Done: true}, nil
	}
	st := p.steps[n]
	out := orchestrator.Step{
		Text: st.text,
		Done: n == len(p.steps)-1,
		LLM:  slices.Clone(st.usage),
	}
	for j, c := range st.calls {
		if !slices.ContainsFunc(s.Tools, func(t orchestrator.Tool) bool { return t.Name == c.Tool }) {
			return orchestrator.Step{}, &orchestrator.PlannerError{
				Err: fmt.Errorf("%w: %s: step %d, call %d: tool %q is not available to agent %q",
					orchestrator.ErrPlanner, p.name, n+1, j+1, c.Tool, s.Agent),
				LLM: out.LLM,
			}
		}
		c.Args = bytes.Clone(c.Args)
		out.Calls = append(out.Calls, c)
	}
	return out, nil
}
