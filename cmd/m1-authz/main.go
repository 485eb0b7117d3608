// Command m1-authz is M1's sidecar: an Envoy ext_authz v3 gRPC server that
// decides every tool call, and an admin HTTP port. See docs/CONFIGURATION.md.
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
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/internal/sidecar"
)

func main() { os.Exit(run()) }

// hangups delivers SIGHUP, which reloads the JWKS file and the policy.
func hangups() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch
}

func run() int {
	opts := sidecar.DefaultOptions()
	fs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	env := opts.BindFlags(fs)
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = config.Usage(fs, env)
	if err := config.Load(fs, os.Args[1:], env, os.LookupEnv); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		fmt.Fprintln(os.Stderr, "m1-authz:", err)
		return 2
	}
	if *version {
		fmt.Println(buildinfo.String("m1-authz"))
		return 0
	}
	logger, err := logging.New(opts.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "m1-authz:", err)
		return 2
	}
	defer logger.Sync() //nolint:errcheck // stderr sync errors are not actionable
	redisconn.RouteDriverLogs(logger.Named("go-redis"))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts.Logger, opts.Registerer, opts.Gatherer = logger, reg, reg

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := sidecar.Run(ctx, opts, hangups()); err != nil {
		logger.Error("m1-authz failed", zap.Error(err))
		fmt.Fprintln(os.Stderr, "m1-authz:", err)
		return 1
	}
	return 0
}
