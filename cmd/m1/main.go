// Command m1 is M1's operator CLI: keys, approvals, grants, tokens,
// revocation, check (a request as Envoy would send it), policy test and
// eval, audit, preflight and bench. Run "m1 help" for the commands.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/cli"
	"github.com/m1-agent/m1/internal/redisconn"
)

func main() { os.Exit(run()) }

// run is the one place m1 handles signals: SIGINT and SIGTERM cancel the
// command's context.
func run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// go-redis prints its own dial errors to stderr; the commands that use
	// Redis (preflight) report them in their output instead.
	redisconn.RouteDriverLogs(zap.NewNop())
	return cli.Main(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
}
