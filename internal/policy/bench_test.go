package policy

import (
	"context"
	"testing"

	"github.com/m1-agent/m1/policies"
)

// BenchmarkEval evaluates the default bundle for MCP tool calls, the hot path
// of a check when the decision cache misses.
func BenchmarkEval(b *testing.B) {
	bundle, err := LoadFS(policies.FS())
	if err != nil {
		b.Fatal(err)
	}
	e, err := Prepare(context.Background(), bundle, Options{})
	if err != nil {
		b.Fatal(err)
	}
	inputs := []struct {
		name, input string
		allowed     bool
	}{
		{"read_file", `{"m1": {"kind": "tool_call", "tool": "read_file", "args": {"path": "/etc/hosts"},
			"args_sha256": "5d7a7e5f4f0a0d1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f708192a3b",
			"principal": "agent-42", "token": null,
			"request": {"method": "POST", "host": "tools.local", "path": "/mcp"}}}`, true},
		{"write_file_token", `{"m1": {"kind": "tool_call", "tool": "write_file", "args": {"path": "a.txt", "content": "x"},
			"args_sha256": "5d7a7e5f4f0a0d1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f708192a3b",
			"principal": "agent-42", "token": {"sub": "agent-42", "jti": "j1", "m1": {"kind": "approval"}},
			"request": {"method": "POST", "host": "tools.local", "path": "/mcp"}}}`, true},
	}
	for _, in := range inputs {
		v := input(b, in.input)
		b.Run(in.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				d, err := e.Eval(ctx, v)
				if err != nil || d.Allowed != in.allowed {
					b.Fatalf("Eval = %+v, %v", d, err)
				}
			}
		})
		b.Run(in.name+"_parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ctx := context.Background()
				for pb.Next() {
					if d, err := e.Eval(ctx, v); err != nil || d.Allowed != in.allowed {
						b.Errorf("Eval = %+v, %v", d, err)
						return
					}
				}
			})
		})
	}
}
