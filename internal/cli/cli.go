// Package cli is the m1 operator command: it parses the command line,
// dispatches to the subcommands (check, policy, preflight, bench, …) and
// returns the exit status. cmd/m1 only turns signals into a context and
// calls [Main].
//
// Exit statuses are the same for every command that decides: 0 allow (or
// success), 1 deny (or a failing test), 2 an error (bad flags, unreadable
// input, connection failure, timeout).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/m1-agent/m1/internal/buildinfo"
)

// Exit statuses.
const (
	exitOK    = 0 // allow, success, tests pass
	exitDeny  = 1 // deny, tests fail
	exitError = 2 // bad usage or any error
)

// env reads an environment variable; os.LookupEnv in production.
type env func(string) (string, bool)

// cmdIO is what a command reads and writes.
type cmdIO struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	lookupEnv      env
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *cmdIO, args []string) int
}

func commands() []command {
	return []command{
		{"check", "send a request to m1-authz as Envoy's ext_authz filter would; print the decision", runCheck},
		{"policy", "test a policy bundle, or evaluate its decision for one input", runPolicy},
		{"preflight", "check an m1-authz configuration before rollout: policy, keys, store, Redis, ports", runPreflight},
		{"bench", "load-test m1-authz (see m1 bench -h)", runBench},
		{"loadtest", "run the load scenarios against real processes; report.json and report.html (see m1 loadtest -h)", runLoadtest},
		{"health", "probe a health endpoint of m1-authz, m1-orchestrator or m1-demo-tool (container health checks)", runHealth},
		{"keys", "generate approval signing keys and the public JWKS", runKeys},
		{"token", "mint or inspect approval tokens", runToken},
		{"revoke", "revoke approval tokens by jti or agent (admin API)", runRevoke},
		{"approve", "review pending proposals and approve them (signs approval tokens)", runApprove},
		{"reject", "reject a pending proposal with a reason", runReject},
		{"grant", "sign a grant: a narrow pre-authorization of a bounded number of calls", runGrant},
		{"dev-proxy", "a local stand-in for Envoy's ext_authz filter (not for production)", runDevProxy},
		{"audit", "verify, export and prune the audit trail", runAudit},
		{"store", "the store's schema, chains and size; back it up and restore it", runStore},
		{"version", "print the version", runVersion},
		{"help", "print help for m1 or one command", nil}, // handled by Main
	}
}

// Main runs the m1 command line args (without the program name) and returns
// the exit status. Cancelling ctx (cmd/m1 does on SIGINT and SIGTERM)
// cancels the command in progress. The environment is the process's.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return run(ctx, args, &cmdIO{stdin: stdin, stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv})
}

func run(ctx context.Context, args []string, c *cmdIO) int {
	if len(args) == 0 {
		usage(c.stderr)
		return exitError
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		usage(c.stdout)
		return exitOK
	case "-version", "--version":
		return runVersion(ctx, c, nil)
	case "help":
		if len(rest) == 0 {
			usage(c.stdout)
			return exitOK
		}
		// "m1 help policy eval" is "m1 policy eval -h".
		return run(ctx, append(slices.Clone(rest), "-h"), c)
	}
	for _, cmd := range commands() {
		if cmd.name == name && cmd.run != nil {
			return cmd.run(ctx, c, rest)
		}
	}
	fmt.Fprintf(c.stderr, "m1: unknown command %q\nRun 'm1 help' for usage.\n", name)
	return exitError
}

func usage(w io.Writer) {
	fmt.Fprint(w, `m1 is the operator command of M1, the execution-authority layer for AI agents.

Usage:
  m1 <command> [arguments]

Commands:
`)
	width := 0
	for _, cmd := range commands() {
		width = max(width, len(cmd.name))
	}
	for _, cmd := range commands() {
		fmt.Fprintf(w, "  %-*s  %s\n", width, cmd.name, cmd.summary)
	}
	fmt.Fprint(w, `
Run 'm1 help <command>' or 'm1 <command> -h' for a command's flags.
Exit status: 0 allow or success, 1 deny or failed tests, 2 error.
`)
}

func runVersion(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("version", "m1 version", "Print the version of m1.", nil)
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	fmt.Fprintln(c.stdout, buildinfo.String("m1"))
	return exitOK
}

// flagSet is a subcommand's flags with their help text and environment
// variables.
type flagSet struct {
	*flag.FlagSet
	synopsis    string
	description string
	env         map[string]string // flag name -> environment variable
	given       map[string]bool   // flags given on the command line (after parse)
}

// newFlagSet returns an empty flag set for the command. env maps flag names
// to the environment variables that give their defaults.
func newFlagSet(name, synopsis, description string, env map[string]string) *flagSet {
	fs := flag.NewFlagSet("m1 "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parse reports errors itself
	fs.Usage = func() {}
	return &flagSet{FlagSet: fs, synopsis: synopsis, description: description, env: env}
}

// printUsage writes the synopsis, description and flags.
func (fs *flagSet) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n", fs.synopsis, fs.description)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if len(names) == 0 {
		return
	}
	fmt.Fprint(w, "\nFlags:\n")
	for _, n := range names { // VisitAll is in lexical order
		f := fs.Lookup(n)
		typ, text := flag.UnquoteUsage(f)
		line := "  --" + n
		if typ != "" {
			line += " " + typ
		}
		var notes []string
		if e, ok := fs.env[n]; ok {
			notes = append(notes, "$"+e)
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
			notes = append(notes, fmt.Sprintf("default %q", f.DefValue))
		}
		if len(notes) > 0 {
			text += " (" + strings.Join(notes, ", ") + ")"
		}
		fmt.Fprintf(w, "%s\n      %s\n", line, text)
	}
}

// parse parses args into fs: flags may come before, between or after the
// positional arguments ("m1 policy eval DIR --input FILE"); "--" ends the
// flags. Flags not given take their environment variable, when set and not
// empty. It returns ok = false with the exit status when the command must
// stop: after printing help (-h, --help) to stdout, or an error to stderr.
// The positional arguments are left in fs.Args(); there must be between
// minArgs and maxArgs of them (maxArgs < 0: no limit).
func parse(fs *flagSet, c *cmdIO, args []string, minArgs, maxArgs int) (code int, ok bool) {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			if name == "h" || name == "help" {
				fs.printUsage(c.stdout)
				return exitOK, false
			}
			continue // fs.Parse reports it
		}
		if b, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool && b.IsBoolFlag() {
			continue
		}
		if i+1 == len(args) {
			return usageError(fs, c, fmt.Errorf("flag needs an argument: %s", a))
		}
		i++
		flags = append(flags, args[i])
	}
	if err := fs.Parse(append(flags, append([]string{"--"}, pos...)...)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.printUsage(c.stdout)
			return exitOK, false
		}
		return usageError(fs, c, err)
	}
	fs.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { fs.given[f.Name] = true })
	for name, e := range fs.env {
		if fs.given[name] {
			continue
		}
		if v, ok := c.lookupEnv(e); ok && v != "" {
			if err := fs.Set(name, v); err != nil {
				return usageError(fs, c, fmt.Errorf("$%s=%q: %w", e, v, err))
			}
		}
	}
	switch n := fs.NArg(); {
	case n < minArgs:
		return usageError(fs, c, errors.New("missing arguments"))
	case maxArgs >= 0 && n > maxArgs:
		return usageError(fs, c, fmt.Errorf("unexpected arguments %q", fs.Args()[maxArgs:]))
	}
	return exitOK, true
}

// usageError reports a command-line error and returns exit status 2.
func usageError(fs *flagSet, c *cmdIO, err error) (int, bool) {
	fmt.Fprintf(c.stderr, "%s: %v\nUsage: %s\nRun '%s -h' for help.\n", fs.Name(), err, fs.synopsis, fs.Name())
	return exitError, false
}

// fail reports an error of command name and returns exit status 2.
func fail(c *cmdIO, name string, err error) int {
	fmt.Fprintf(c.stderr, "m1 %s: %v\n", name, err)
	return exitError
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ", ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// readArg reads the value of a flag that takes a string, @FILE, or @- for
// stdin.
func readArg(c *cmdIO, v string) ([]byte, error) {
	switch {
	case v == "@-":
		return io.ReadAll(c.stdin)
	case strings.HasPrefix(v, "@"):
		return os.ReadFile(v[1:])
	}
	return []byte(v), nil
}

// readFile reads a file argument, "-" meaning stdin.
func readFile(c *cmdIO, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(c.stdin)
	}
	return os.ReadFile(name)
}
