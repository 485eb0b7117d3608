package cli

import (
	"context"

	"github.com/m1-agent/m1/internal/bench"
)

// runBench is "m1 bench": package bench parses its own flags and handles
// interrupts.
func runBench(_ context.Context, c *cmdIO, args []string) int {
	return bench.Main(args, c.stdout, c.stderr)
}
