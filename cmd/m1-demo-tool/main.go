// Command m1-demo-tool serves the demo tools (read_file, list_dir,
// write_file, and a run_command that never runs anything) over MCP at /mcp
// and REST at /tools/{name}, confined to one directory. It stands in for a
// tool pod's container in `make demo` and the end-to-end tests; it is not
// a product.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/m1-agent/m1/internal/buildinfo"
	"github.com/m1-agent/m1/internal/demotool"
	"github.com/m1-agent/m1/internal/logging"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("m1-demo-tool", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:10001", "listen address")
	dir := fs.String("dir", "workspace", "directory the tools may read and write")
	level := fs.String("log-level", "info", "log level")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *version {
		fmt.Println(buildinfo.String("m1-demo-tool"))
		return 0
	}
	logger, err := logging.New(*level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "m1-demo-tool:", err)
		return 2
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "m1-demo-tool:", err)
		return 1
	}
	tool, err := demotool.New(*dir, demotool.WithLogger(logger))
	if err != nil {
		fmt.Fprintln(os.Stderr, "m1-demo-tool:", err)
		return 1
	}
	defer tool.Close()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "m1-demo-tool:", err)
		return 1
	}
	srv := &http.Server{Handler: tool, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Println(lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "m1-demo-tool:", err)
		return 1
	}
	<-drained // calls in flight finish before the workspace is released
	return 0
}
