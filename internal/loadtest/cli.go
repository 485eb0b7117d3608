package loadtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
)

// Main is `m1 loadtest`: it parses args (after "loadtest"), runs the
// scenarios until they end or ctx is cancelled, prints each figure beside
// its target, and writes report.json and report.html to --out. Exit
// status: 0 every target met, no regression and no scenario failed; 1 a
// target was missed, a figure regressed against --baseline or a scenario
// failed (the report is still written); 2 bad usage or a run that could not
// start. -h prints help to stdout.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts := DefaultOptions()
	fs := flag.NewFlagSet("m1 loadtest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	var scenarios, targets multiFlag
	fs.Var(&scenarios, "scenario", "scenario to run: "+strings.Join(AllScenarios, ", ")+" (repeatable or comma-separated; none = all)")
	fs.DurationVar(&opts.Duration, "duration", opts.Duration, "measured time of each phase of a scenario (at most "+MaxDuration.String()+")")
	fs.StringVar(&opts.Out, "out", opts.Out, "directory of report.json and report.html")
	fs.StringVar(&opts.Baseline, "baseline", "", "an earlier report.json: figures more than 10% worse are marked as regressions")
	fs.StringVar(&opts.BinDir, "bin", "", "directory of m1-authz, m1, m1-orchestrator and m1-demo-tool (default: beside this m1, else PATH)")
	fs.IntVar(&opts.Concurrency, "concurrency", opts.Concurrency, "gRPC calls in flight")
	fs.IntVar(&opts.Agents, "agents", opts.Agents, "concurrent agent runs (agents scenario)")
	fs.BoolVar(&opts.Profile, "profile", opts.Profile, "take a CPU profile of a sidecar during each scenario (pprof on its admin port)")
	fs.Var(&targets, "target", "use a running process: authz=HOST:PORT, admin=HOST:PORT, authz2=…, admin2=…, redis=redis://…, orchestrator=URL (repeatable)")
	fs.StringVar(&opts.AdminToken, "admin-token", os.Getenv("M1_ADMIN_TOKEN"), "the targets' admin token ($M1_ADMIN_TOKEN)")
	fs.StringVar(&opts.KeyFile, "key", os.Getenv("M1_SIGNING_KEY"), "with --target: the private JWK the target sidecars trust ($M1_SIGNING_KEY)")
	fs.StringVar(&opts.Audience, "audience", opts.Audience, "the sidecars' M1_AUDIENCE, named in the tokens minted")
	usageErr := func(err error) int {
		fmt.Fprintf(stderr, "m1 loadtest: %v\nUsage: %s\nRun 'm1 loadtest -h' for help.\n", err, synopsis)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs)
			return 0
		}
		return usageErr(err)
	}
	if fs.NArg() > 0 {
		return usageErr(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	opts.Scenarios = scenarios
	if err := opts.Targets.set(targets); err != nil {
		return usageErr(err)
	}
	if err := opts.validate(); err != nil {
		return usageErr(err)
	}
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "m1 loadtest: "+format+"\n", args...) }
	rep, err := Run(ctx, opts, logf)
	if rep != nil {
		_ = WriteText(stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "m1 loadtest:", err)
		return 2
	}
	fmt.Fprintf(stdout, "\nreport: %s, %s\n", filepath.Join(opts.Out, "report.json"), filepath.Join(opts.Out, "report.html"))
	return rep.exitCode()
}

func (r *Report) exitCode() int {
	if r.Regressions > 0 {
		return 1
	}
	for _, s := range r.Scenarios {
		if s.Error != "" {
			return 1
		}
		for _, f := range s.Figures {
			if !f.Met && f.Cmp != "" {
				return 1
			}
		}
	}
	return 0
}

const synopsis = "m1 loadtest [--scenario NAME] [--duration D] [--out DIR] [--baseline FILE] [--target NAME=ADDR] [flags]"

const description = `Run load scenarios against real processes and report each figure beside
its target:

  cache      the decision cache under 80/20 hits/misses, L1 and with Redis as L2 (> 10,000 decisions/s)
  policy     cacheable checks while the bundle flips and the cache is flushed (> 5,000/s, hit rate > 70%)
  approvals  cacheable checks, fresh approvals and grants vs a no-op ext_authz server in the same
             run, one sidecar (≥ 0.85×, ≥ 0.5× and ≥ 0.7× no-op), then two sharing Redis
  agents     concurrent agent runs through m1-orchestrator, m1 dev-proxy, m1-authz and m1-demo-tool,
             each run carrying its agent's grant: no person (> 95% complete; runs/s, tool call p99)
  metrics    /metrics scrape time under load (p99 < 100 ms)

It starts m1-authz, m1-orchestrator, m1 dev-proxy and m1-demo-tool (from
--bin, beside this m1, or PATH) on free 127.0.0.1 ports in a temporary
directory, and redis-server when a scenario needs it; or uses --target
addresses. The load generator (ghz) runs in this process, and the no-op
server in one of its own (m1 bench --serve-noop), on the same cores. It
writes report.json (every figure: ops/s, mean, p50, p95, p99, errors, CPU
and memory of each process) and a self-contained report.html (charts, each figure against its target, the top
functions of a CPU profile taken from a sidecar, advice where a target is
missed, regressions against --baseline).

Exit status: 0 every target met, 1 a target missed, a regression or a
failed scenario (the report is still written), 2 error.`

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n\nFlags:\n", synopsis, description)
	fs.VisitAll(func(f *flag.Flag) {
		typ, text := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "[]" {
			text += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "%s\n      %s\n", line, text)
	})
}

// multiFlag is a repeatable flag whose values may also be comma-separated.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }

func (m *multiFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*m = append(*m, p)
		}
	}
	return nil
}

// set fills t from NAME=ADDR pairs.
func (t *Targets) set(pairs []string) error {
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || v == "" {
			return fmt.Errorf("Targets (--target): %q is not NAME=ADDR", p)
		}
		switch k {
		case "authz":
			t.Authz = v
		case "admin":
			t.Admin = v
		case "authz2":
			t.Authz2 = v
		case "admin2":
			t.Admin2 = v
		case "redis":
			t.Redis = v
		case "orchestrator":
			t.Orchestrator = v
		default:
			return fmt.Errorf("Targets (--target): unknown name %q (authz, admin, authz2, admin2, redis, orchestrator)", k)
		}
	}
	return nil
}

// WriteText prints each scenario's figures beside their targets.
func WriteText(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, s := range r.Scenarios {
		fmt.Fprintf(tw, "\n== %s\n", s.Name)
		if s.Skipped != "" {
			fmt.Fprintf(tw, "skipped: %s\n", s.Skipped)
		}
		if s.Error != "" {
			fmt.Fprintf(tw, "FAILED: %s\n", s.Error)
		}
		if len(s.Figures) > 0 {
			fmt.Fprintln(tw, "figure\tvalue\ttarget\t\tp50\tp99\terrors\t")
		}
		for _, f := range s.Figures {
			p50, p99, errs := "", "", ""
			if f.Load != nil {
				p50, p99, errs = f.Load.P50.String(), f.Load.P99.String(), fmt.Sprint(f.Load.Errors)
			}
			status := f.Status()
			if c := f.FormatChange(); c != "" {
				status += " (" + c + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", f.Name, f.FormatValue(), f.FormatTarget(), status, p50, p99, errs)
		}
		for _, p := range s.Processes {
			// The rounds last, past the columns, so that they do not widen them.
			fmt.Fprintf(tw, "process %s\t%.2f cores\t%s RSS\t\t\t\t\t%s\n", p.Name, p.Cores, mib(p.RSSBytes), p.FormatRounds())
		}
		if p := s.Profile; p != nil && len(p.Cum) > 0 {
			if hot, share := p.hotspot(); hot != "" {
				during := ""
				if p.Phase != "" {
					during = " during " + p.Phase
				}
				fmt.Fprintf(tw, "profile%s: %s takes %.0f%% of the sidecar's CPU samples\n", during, hot, share)
			}
		}
		for _, a := range s.Advice {
			fmt.Fprintf(tw, "advice: %s\n", a)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(tw, "note: %s\n", n)
		}
	}
	if r.Baseline != "" {
		fmt.Fprintf(tw, "\n%d regression(s) against %s\n", r.Regressions, r.Baseline)
	}
	return tw.Flush()
}
