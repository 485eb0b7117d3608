package cli

import (
	"context"

	"github.com/m1-agent/m1/internal/loadtest"
)

// runLoadtest is "m1 loadtest": package loadtest parses its own flags; ctx
// ends the run.
func runLoadtest(ctx context.Context, c *cmdIO, args []string) int {
	return loadtest.Main(ctx, args, c.stdout, c.stderr)
}
