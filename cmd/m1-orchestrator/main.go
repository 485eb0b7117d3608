// Command m1-orchestrator is M1's companion service: it turns goals into
// proposed tool calls, keeps them until an operator approves or rejects
// them, dispatches approved calls through the tools' sidecars and records
// runs, results and LLM cost. See docs/ORCHESTRATOR.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/buildinfo"
	"github.com/m1-agent/m1/internal/config"
	"github.com/m1-agent/m1/internal/logging"
	"github.com/m1-agent/m1/internal/orchestratord"
)

func main() { os.Exit(run()) }

func run() int {
	opts := orchestratord.DefaultOptions()
	fs := flag.NewFlagSet("m1-orchestrator", flag.ContinueOnError)
	env := opts.BindFlags(fs)
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = config.Usage(fs, env)
	if err := config.Load(fs, os.Args[1:], env, os.LookupEnv); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintln(os.Stderr, "m1-orchestrator:", err)
		return 2
	}
	if *version {
		fmt.Println(buildinfo.String("m1-orchestrator"))
		return 0
	}
	logger, err := logging.New(opts.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "m1-orchestrator:", err)
		return 2
	}
	defer logger.Sync() //nolint:errcheck // stderr sync errors are not actionable

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts.Logger, opts.Registerer, opts.Gatherer = logger, reg, reg

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := orchestratord.Run(ctx, opts); err != nil {
		logger.Error("m1-orchestrator failed", zap.Error(err))
		fmt.Fprintln(os.Stderr, "m1-orchestrator:", err)
		return 1
	}
	return 0
}
