package scripted_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/scripted"
)

const plan = `# plan.yaml
model: claude-sonnet-4-6
steps:
  - text: "I will look around first."
    usage: {input_tokens: 1200, output_tokens: 150, cache_read_tokens: 10, cache_write_tokens: 20}
    calls:
      - tool: list_dir
        args: {path: "."}
        reasoning: "See what is in the workspace."
      - tool: read_file
        args:
          path: notes.txt
          limit: 4096
          offset: -1.5
          follow: true
          encoding: null
          tags: [a, 2]
          z: {b: 1, a: 2}
  - calls:
      - tool: write_file
        args: {path: notes.txt, content: "hello <world> & co"}
        reasoning: "Record the finding."
`

var tools = []orchestrator.Tool{{Name: "list_dir"}, {Name: "read_file"}, {Name: "write_file"}}

func session(steps int) orchestrator.Session {
	s := orchestrator.Session{RunID: "run-1", Agent: "agent-42", Goal: "g", Tools: tools}
	for range steps {
		s.History = append(s.History, orchestrator.StepRecord{})
	}
	return s
}

func TestNext(t *testing.T) {
	p, err := scripted.Parse([]byte(plan))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	for _, tc := range []struct {
		name    string
		history int
		want    orchestrator.Step
	}{
		{
			name: "first step",
			want: orchestrator.Step{
				Text: "I will look around first.",
				Calls: []orchestrator.Call{
					{ID: "call_1_1", Tool: "list_dir", Args: json.RawMessage(`{"path":"."}`), Reasoning: "See what is in the workspace."},
					{ID: "call_1_2", Tool: "read_file", Args: json.RawMessage(
						`{"path":"notes.txt","limit":4096,"offset":-1.5,"follow":true,"encoding":null,"tags":["a",2],"z":{"b":1,"a":2}}`)},
				},
				LLM: []orchestrator.LLMUsage{{Model: "claude-sonnet-4-6", InputTokens: 1200, OutputTokens: 150, CacheReadTokens: 10, CacheWriteTokens: 20}},
			},
		},
		{
			name:    "last step is done",
			history: 1,
			want: orchestrator.Step{
				Calls: []orchestrator.Call{
					{ID: "call_2_1", Tool: "write_file", Args: json.RawMessage(`{"path":"notes.txt","content":"hello <world> & co"}`), Reasoning: "Record the finding."},
				},
				Done: true,
			},
		},
		{name: "after the last step", history: 2, want: orchestrator.Step{Done: true}},
		{name: "long after the last step", history: 7, want: orchestrator.Step{Done: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := p.Next(context.Background(), session(tc.history))
			if err != nil {
				t.Fatalf("Next(%s): %v", tc.name, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Next(%s) =\n%+v\nwant\n%+v", tc.name, got, tc.want)
			}
			for i, c := range got.Calls {
				// Key order as written, byte for byte.
				if string(c.Args) != string(tc.want.Calls[i].Args) {
					t.Errorf("call %d args = %s, want %s", i+1, c.Args, tc.want.Calls[i].Args)
				}
			}
		})
	}
}

func TestNextDoesNotShareArgs(t *testing.T) {
	p, err := scripted.Parse([]byte(plan))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	a, _ := p.Next(context.Background(), session(0))
	a.Calls[0].Args[2] = 'X'
	b, _ := p.Next(context.Background(), session(0))
	if string(b.Calls[0].Args) != `{"path":"."}` {
		t.Errorf("second Next args = %s after the first caller changed its copy", b.Calls[0].Args)
	}
}

func TestNextUnknownTool(t *testing.T) {
	p, err := scripted.Parse([]byte(plan))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	s := session(0)
	s.Tools = []orchestrator.Tool{{Name: "list_dir"}} // no read_file
	_, err = p.Next(context.Background(), s)
	if !errors.Is(err, orchestrator.ErrPlanner) {
		t.Fatalf("Next = %v, want an error wrapping ErrPlanner", err)
	}
	var pe *orchestrator.PlannerError
	if !errors.As(err, &pe) || len(pe.LLM) != 1 || pe.LLM[0].InputTokens != 1200 {
		t.Errorf("Next error = %#v, want a *PlannerError with the step's usage", err)
	}
	if !strings.Contains(err.Error(), `step 1, call 2: tool "read_file"`) {
		t.Errorf("Next error = %q, want it to name step 1, call 2 and the tool", err)
	}
}

func TestNextCanceled(t *testing.T) {
	p, err := scripted.Parse([]byte(plan))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Next(ctx, session(0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
}

func TestUsageModel(t *testing.T) {
	for _, tc := range []struct {
		name string
		plan string
		want []orchestrator.LLMUsage
	}{
		{
			name: "no model",
			plan: "steps:\n  - usage: {input_tokens: 5}\n",
			want: []orchestrator.LLMUsage{{Model: scripted.DefaultModel, InputTokens: 5}},
		},
		{
			name: "model",
			plan: "model: m\nsteps:\n  - usage: {output_tokens: 3}\n",
			want: []orchestrator.LLMUsage{{Model: "m", OutputTokens: 3}},
		},
		{name: "no usage", plan: "model: m\nsteps:\n  - text: done\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := scripted.Parse([]byte(tc.plan))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := p.Next(context.Background(), session(0))
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if !reflect.DeepEqual(got.LLM, tc.want) || !got.Done {
				t.Errorf("Next(%s) = %+v, want done with usage %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	// call wraps args in a one-step, one-call plan.
	call := func(args string) string {
		return "steps:\n  - calls:\n      - tool: read_file\n        args: " + args + "\n"
	}
	for _, tc := range []struct {
		name string
		plan string
		want string // in the error
	}{
		{"empty", "", "plan: empty plan"},
		{"no steps", "model: m\n", "plan: no steps"},
		{"empty steps", "steps: []\n", "plan: no steps"},
		{"not YAML", "steps: [\n", "plan: yaml:"},
		{"two documents", "steps:\n  - text: a\n---\nsteps: []\n", "more than one YAML document"},
		{"unknown top field", "stepz: []\n", "field stepz not found"},
		{"unknown step field", "steps:\n  - txt: a\n", "field txt not found"},
		{"unknown call field", "steps:\n  - calls:\n      - tool: a\n        argz: {}\n", "field argz not found"},
		{"unknown usage field", "steps:\n  - usage: {input: 1}\n", "field input not found"},
		{"usage not a number", "steps:\n  - usage: {input_tokens: many}\n", "plan: yaml:"},
		{"negative usage", "steps:\n  - usage: {input_tokens: -1}\n", "plan: step 1: usage: negative"},
		{"steps not a list", "steps: {a: 1}\n", "plan: yaml:"},
		{"step without calls before the last", "steps:\n  - text: a\n  - text: b\n", "plan: step 1: no calls"},
		{"no tool", "steps:\n  - calls:\n      - args: {}\n", `plan: step 1, call 1: tool ""`},
		{"bad tool name", "steps:\n  - calls:\n      - tool: read file\n", `plan: step 1, call 1: tool "read file"`},
		{"tool name too long", "steps:\n  - calls:\n      - tool: " + strings.Repeat("a", 129) + "\n", "plan: step 1, call 1: tool"},
		{"args a list", call("[a]"), "plan: step 1, call 1: args: not a mapping"},
		{"args a string", call("x"), "plan: step 1, call 1: args: not a mapping"},
		{"args null", call("null"), "plan: step 1, call 1: args: not a mapping"},
		{"integer key", call("{1: x}"), "args: line 4: key 1 is not a string"},
		{"bool key", call("{true: x}"), "args: line 4: key true is not a string"},
		{"null key", call("{~: x}"), "is not a string"},
		{"complex key", call("{? [1]: 2}"), "a key is not a string"},
		{"duplicate key", call("{a: 1, a: 2}"), `key "a" already defined`},
		{"merge key", call("{<<: {b: 1}}"), "merge keys"},
		{"big integer", call("{n: 9007199254740993}"), "integer 9007199254740993 does not fit"},
		{"huge integer", call("{n: 99999999999999999999}"), "integer 99999999999999999999 does not fit"},
		{"infinity", call("{n: .inf}"), ".inf is not a JSON number"},
		{"nan", call("{n: .nan}"), ".nan is not a JSON number"},
		{"custom tag", call("{n: !thing x}"), "unsupported tag !thing"},
		{"too deep", call(strings.Repeat("{a: ", 70) + "1" + strings.Repeat("}", 70)), "nested deeper than 64"},
		{"too large", call(`{a: "` + strings.Repeat("x", 1<<20) + `"}`), "larger than"},
		{"second step", "steps:\n  - calls: [{tool: a}]\n  - calls: [{tool: b}, {tool: c, args: [1]}]\n", "plan: step 2, call 2: args: not a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := scripted.Parse([]byte(tc.plan))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%s) = %v, want an error containing %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name, args, want string
	}{
		{"absent", "", `{}`},
		{"empty", "{}", `{}`},
		{"order kept", "{z: 1, a: 2, m: 3}", `{"z":1,"a":2,"m":3}`},
		{"quoted number key", `{"1": x}`, `{"1":"x"}`},
		{"numbers", "{i: -12, h: 0x1F, f: 1.5, e: 1e3, big: 9007199254740992}", `{"i":-12,"h":31,"f":1.5,"e":1000,"big":9007199254740992}`},
		{"quoted number stays a string", `{n: "42"}`, `{"n":"42"}`},
		{"timestamp stays text", "{d: 2001-12-14}", `{"d":"2001-12-14"}`},
		{"escapes", `{s: "a\"b\\c\n\u00e9 <&>"}`, `{"s":"a\"b\\c\né <&>"}`},
		{"nested", "{a: [{b: [1, {c: null}]}]}", `{"a":[{"b":[1,{"c":null}]}]}`},
		{"block style", "\n          a: 1\n          b:\n            - x\n            - y", `{"a":1,"b":["x","y"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "steps:\n  - calls:\n      - tool: t\n"
			if tc.args != "" {
				src += "        args: " + tc.args + "\n"
			}
			p, err := scripted.Parse([]byte(src))
			if err != nil {
				t.Fatalf("Parse(%s): %v", tc.name, err)
			}
			got, err := p.Next(context.Background(), orchestrator.Session{Tools: []orchestrator.Tool{{Name: "t"}}})
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if string(got.Calls[0].Args) != tc.want {
				t.Errorf("args(%s) = %s, want %s", tc.name, got.Calls[0].Args, tc.want)
			}
			if !json.Valid(got.Calls[0].Args) {
				t.Errorf("args(%s) = %s, not JSON", tc.name, got.Calls[0].Args)
			}
		})
	}
}

func TestParseAliases(t *testing.T) {
	// An alias in args is followed.
	src := "steps:\n  - calls:\n      - tool: t\n        args: &shared {path: /tmp, n: [1, 2]}\n      - tool: t\n        args: {copy: *shared}\n"
	p, err := scripted.Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	got, err := p.Next(context.Background(), orchestrator.Session{Tools: []orchestrator.Tool{{Name: "t"}}})
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if a := string(got.Calls[1].Args); a != `{"copy":{"path":"/tmp","n":[1,2]}}` {
		t.Errorf("args = %s, want the anchored mapping copied", a)
	}

	// Aliases that multiply (a "billion laughs") stop at the size limit.
	var b strings.Builder
	b.WriteString("steps:\n  - calls:\n      - tool: t\n        args:\n")
	b.WriteString("          l0: &l0 [" + strings.TrimSuffix(strings.Repeat(`"xxxxxxxxxx",`, 10), ",") + "]\n")
	for i := 1; i < 9; i++ {
		prev := "*l" + string(rune('0'+i-1))
		b.WriteString("          l" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [" +
			strings.TrimSuffix(strings.Repeat(prev+",", 10), ",") + "]\n")
	}
	if _, err := scripted.Parse([]byte(b.String())); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Parse(alias bomb) = %v, want a size error", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.yaml")
	bad := "steps:\n  - calls: [{tool: a}]\n  - calls: [{tool: write_file, args: [notes.txt]}]\n"
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := scripted.Load(path)
	if want := path + ": step 2, call 1: args: not a mapping"; err == nil || err.Error() != want {
		t.Errorf("Load(bad) = %v, want %q", err, want)
	}
	if _, err := scripted.Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}
}

func TestDemoPlan(t *testing.T) {
	p, err := scripted.Load(filepath.Join("..", "..", "testdata", "plans", "demo.yaml"))
	if err != nil {
		t.Fatalf("Load(demo.yaml): %v", err)
	}
	registry := []orchestrator.Tool{{Name: "list_dir"}, {Name: "read_file"}, {Name: "run_command"}, {Name: "write_file"}}
	s := orchestrator.Session{Agent: "demo", Goal: "demo", Tools: registry}
	for n := 1; ; n++ {
		step, err := p.Next(context.Background(), s)
		if err != nil {
			t.Fatalf("Next(step %d): %v", n, err)
		}
		if step.Done {
			if n != 2 {
				t.Errorf("demo plan done after %d steps, want 2", n)
			}
			return
		}
		if len(step.Calls) == 0 {
			t.Fatalf("step %d: no calls and not done", n)
		}
		s.History = append(s.History, orchestrator.StepRecord{Text: step.Text, Calls: step.Calls})
	}
}
