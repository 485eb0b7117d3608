// Command m1 is M1's operator CLI: send a request as Envoy would (check),
// test and evaluate policy bundles (policy), load-test the sidecar (bench).
// Run "m1 help" for the commands.
package main

import (
	"os"

	"github.com/m1-agent/m1/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) }
