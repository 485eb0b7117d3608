package scripted_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/scripted"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(plan))
	f.Add([]byte("steps:\n  - text: done\n"))
	f.Add([]byte("steps:\n  - calls:\n      - tool: t\n        args: &x {a: 1}\n      - tool: t\n        args: {b: *x}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := scripted.Parse(data)
		if err != nil {
			return
		}
		// With no tool available, a step either proposes a call (an
		// error) or is the plan's last step without calls (done).
		step, err := p.Next(context.Background(), orchestrator.Session{})
		switch {
		case err != nil && !errors.Is(err, orchestrator.ErrPlanner):
			t.Fatalf("Next = %v, want an ErrPlanner error", err)
		case err == nil && (!step.Done || len(step.Calls) != 0):
			t.Fatalf("Next = %+v, want done without calls", step)
		}
	})
}

func FuzzParseArgs(f *testing.F) {
	for _, a := range []string{`{a: 1}`, `[1]`, `{"k": "v", n: .5}`, `{a: &x [1], b: *x}`, `{a: 0x1F, b: -0.0, c: 1e308}`} {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, args string) {
		src := "steps:\n  - calls:\n      - tool: t\n        args: " + args + "\n"
		p, err := scripted.Parse([]byte(src))
		if err != nil {
			return
		}
		step, err := p.Next(context.Background(), orchestrator.Session{Tools: []orchestrator.Tool{{Name: "t"}}})
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		a := step.Calls[0].Args
		var v map[string]any
		if err := json.Unmarshal(a, &v); err != nil || !bytes.HasPrefix(a, []byte("{")) {
			t.Fatalf("args %q -> %s: not a JSON object (%v)", args, a, err)
		}
	})
}
