package cli

import (
	"context"

	"github.com/m1-agent/m1/internal/bench"
)

// runBench is "m1 bench": package bench parses its own flags; ctx ends the
// run.
func runBench(ctx context.Context, c *cmdIO, args []string) int {
	return bench.Main(ctx, args, c.stdout, c.stderr)
}
