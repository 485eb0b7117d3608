package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/m1-agent/m1/internal/config"
	"github.com/m1-agent/m1/internal/sidecar"
)

const preflightDescription = `Check an m1-authz deployment's configuration before rollout. It reads the
configuration m1-authz would read (the same flags, the same M1_*, REDIS_* and
other environment variables, the same --config file, in the same order of
precedence) and checks, each ok, warn or fail with a one-line detail:

  configuration    the flags, environment and config file parse
  options          they validate as m1-authz validates them at start
  policy           the bundle (embedded, or M1_POLICY_DIR) loads and compiles
  policy tests     its Rego tests pass, if it has any
  approval keys    M1_JWKS_FILE parses with usable public keys; M1_JWT_SECRET
                   is 32 bytes or more (warn: every holder can mint)
  audience         M1_AUDIENCE is set when there are keys
  trusted issuers  M1_TRUSTED_ISSUERS parses
  tls certificate  M1_TLS_CERT_FILE and M1_TLS_KEY_FILE load and match, and
                   no certificate of the chain has expired or is not yet
                   valid (warn: one expires within 14 days)
  tls client CA    M1_TLS_CLIENT_CA_FILE holds certificates, not all expired
                   (warn: one expires within 14 days)
  store schema     this binary can run against the store's schema (read
                   before anything is migrated; a newer one that does not
                   declare itself compatible fails)
  audit store      the store opens and its migrations apply: SQLite under
                   M1_DATA_DIR, or M1_DATABASE_URL is reachable
  disk             free space under M1_DATA_DIR, where the audit spool grows
                   while the store is down (fail under 100 MiB, warn under
                   1 GiB)
  memory           a full decision cache (M1_CACHE_SIZE × ~512 B) against
                   the cgroup memory limit (warn over half, fail over all)
  redis            REDIS_URL, when set, answers PING
  admin token      M1_ADMIN_TOKEN is set (warn: a random one would be made)
  listen gRPC,     M1_GRPC_ADDR and M1_ADMIN_ADDR can be bound (each is
  listen admin     bound and released at once)

Run it where m1-authz will run (same host or pod, same environment). Each
network step is bounded by --timeout. Side effects: like m1-authz at start,
it creates M1_DATA_DIR and, with the default SQLite store, the database file
m1.db with its tables when they are missing.

Exit status: 0 nothing failed (warnings allowed), 1 a check failed, 2 bad
usage.`

func runPreflight(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("preflight", "m1 preflight [m1-authz flags] [--config FILE] [--json] [--timeout DURATION]", preflightDescription, nil)
	authzOpts := sidecar.DefaultOptions() // only for the help: the values come from load below
	fs.env = authzOpts.BindFlags(fs.FlagSet)
	fs.String(config.ConfigFlag, "", "m1-authz's YAML config `file` (keys are flag names; the environment and flags override it)")
	asJSON := fs.Bool("json", false, "print the checks as one JSON object")
	timeout := fs.Duration("timeout", 5*time.Second, "bound of each network step (Redis, PostgreSQL, binding a port)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.printUsage(c.stdout)
			return exitOK
		}
		code, _ := usageError(fs, c, err)
		return code
	}
	switch {
	case fs.NArg() > 0:
		code, _ := usageError(fs, c, fmt.Errorf("unexpected arguments %q", fs.Args()))
		return code
	case *timeout <= 0:
		code, _ := usageError(fs, c, errors.New("--timeout must be positive"))
		return code
	}

	opts, err := loadAuthzOptions(fs, c)
	checks := []sidecar.PreflightCheck{{Name: "configuration", Status: sidecar.PreflightOK, Detail: "flags and environment read"}}
	if file := fs.Lookup(config.ConfigFlag).Value.String(); file != "" {
		checks[0].Detail = "flags, environment and " + file + " read"
	}
	if err != nil {
		checks[0].Status, checks[0].Detail = sidecar.PreflightFail, err.Error()
	} else {
		checks = append(checks, sidecar.Preflight(ctx, opts, *timeout)...)
	}

	rep := preflightReport{OK: true, Checks: checks}
	for _, ch := range checks {
		switch ch.Status {
		case sidecar.PreflightFail:
			rep.OK = false
			rep.Failed++
		case sidecar.PreflightWarn:
			rep.Warnings++
		}
	}
	if *asJSON {
		if code := printJSON(c, "preflight", rep); code != exitOK {
			return code
		}
	} else if err := rep.print(c.stdout); err != nil {
		return fail(c, "preflight", err)
	}
	if !rep.OK {
		return exitDeny
	}
	return exitOK
}

// loadAuthzOptions fills m1-authz's Options exactly as m1-authz does: its
// own flag set (so that a config key only preflight knows, such as json,
// is refused as m1-authz refuses it), given the m1-authz flags of this
// command line, then config.Load for the environment and the file.
func loadAuthzOptions(fs *flagSet, c *cmdIO) (sidecar.Options, error) {
	opts := sidecar.DefaultOptions()
	afs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	afs.SetOutput(io.Discard)
	env := opts.BindFlags(afs)
	var args []string
	fs.Visit(func(f *flag.Flag) { // the flags given on the command line
		if afs.Lookup(f.Name) != nil || f.Name == config.ConfigFlag {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	err := config.Load(afs, args, env, c.lookupEnv)
	return opts, err
}

// preflightReport is the result of m1 preflight; its --json output.
type preflightReport struct {
	OK       bool                     `json:"ok"` // no check failed
	Failed   int                      `json:"failed"`
	Warnings int                      `json:"warnings"`
	Checks   []sidecar.PreflightCheck `json:"checks"`
}

// print writes the checks as a table and a summary line.
func (r preflightReport) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, ch := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", ch.Name, ch.Status, escapeTerminal(ch.Detail))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verdict := "ready"
	if !r.OK {
		verdict = "not ready"
	}
	_, err := fmt.Fprintf(w, "\n%s: %d failed, %d %s\n", verdict, r.Failed, r.Warnings, plural(r.Warnings, "warning", "warnings"))
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
