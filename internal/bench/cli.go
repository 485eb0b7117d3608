package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Main is `m1 bench`: it parses args (the arguments after "bench"), runs the
// benchmark until it ends or ctx is cancelled (cmd/m1 cancels it on SIGINT
// and SIGTERM), and writes the report to stdout, as a table or with --json
// as JSON. Its exit status follows the m1 command's (0 allow, 1 deny,
// 2 error): 0 when every call was allowed, 1 when the run completed but
// some calls failed or were not allowed (the report is still written),
// 2 for bad usage or a run that failed (m1-authz unreachable, no call
// completed, a time limit before any result). -h prints help to stdout.
//
// With --addr and without --noop-addr it runs the no-op baseline as a
// child, os.Executable() bench --serve-noop 127.0.0.1:0: the executable
// must be m1, or route those arguments to Main (as this package's tests
// do in TestMain).
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts := DefaultOptions()
	fs := flag.NewFlagSet("m1 bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors and help are written below, as by the other m1 commands
	fs.Usage = func() {}
	fs.IntVar(&opts.Concurrency, "concurrency", opts.Concurrency, "calls in flight per target")
	fs.IntVar(&opts.Connections, "connections", opts.Connections, "gRPC connections the calls share")
	fs.IntVar(&opts.Requests, "requests", opts.Requests, "measured calls per target (when --duration is 0)")
	fs.DurationVar(&opts.Duration, "duration", opts.Duration, "measured time per target instead of --requests (0 = use --requests; at most "+MaxDuration.String()+")")
	fs.IntVar(&opts.Warmup, "warmup", opts.Warmup, "unmeasured calls per target before measuring (they also fill m1-authz's decision cache)")
	fs.StringVar(&opts.Addr, "addr", "", "a running m1-authz (loopback `host:port`) to measure instead of an in-process one; the no-op baseline then runs in a process of its own too (see --noop-addr)")
	fs.StringVar(&opts.NoopAddr, "noop-addr", "", "a running no-op server (loopback `host:port`, from --serve-noop) as the baseline; default: in-process, or with --addr a child process this run starts")
	serveNoop := fs.String("serve-noop", "", "serve the no-op ext_authz server on `host:port` (loopback; port 0 picks one, printed on the first line) until interrupted, and measure nothing")
	fs.BoolVar(&opts.Audit, "audit", false, "the in-process m1-authz also audits every decision to SQLite")
	fs.Float64Var(&opts.Rate, "rate", 0, "measured calls started per second per target (latency at a fixed load); 0 = as fast as they are answered")
	fs.StringVar(&opts.Mode, "mode", opts.Mode, "the path measured: cache (a cacheable call, decision-cache hit), approval (a fresh EdDSA approval per call, each used once), grant (one grant reused by every call)")
	fs.StringVar(&opts.Redis, "redis", "", "shared state of the in-process sidecars: empty = none (uses durable in SQLite), start = start a redis-server, or a loopback redis:// URL")
	fs.IntVar(&opts.Sidecars, "sidecars", opts.Sidecars, "in-process m1-authz sharing the load and Redis (1 or 2; 2 needs --redis)")
	fs.StringVar(&opts.KeyFile, "key", "", "with --addr in approval or grant mode: the private JWK (m1 keys gen) whose public key the sidecar trusts")
	fs.StringVar(&opts.Audience, "audience", opts.Audience, "the sidecars' M1_AUDIENCE, named in the tokens minted")
	asJSON := fs.Bool("json", false, "write the report as JSON")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (the load generator, and the no-op server and m1-authz when in-process) to `file` (go tool pprof)")
	usageErr := func(err error) int {
		fmt.Fprintf(stderr, "m1 bench: %v\nUsage: %s\nRun 'm1 bench -h' for help.\n", err, synopsis)
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
	if *serveNoop != "" {
		if fs.NFlag() > 1 {
			return usageErr(errors.New("--serve-noop takes no other flag"))
		}
		if err := ServeNoop(ctx, *serveNoop, stdout); err != nil {
			fmt.Fprintln(stderr, "m1 bench:", err)
			return 2
		}
		return 0
	}
	if err := opts.validate(); err != nil {
		return usageErr(err)
	}
	var noopProc *noopProcess // the baseline's process, when this run starts it
	if opts.Addr != "" && opts.NoopAddr == "" {
		// Like for like: m1-authz runs in a process of its own, so does
		// the baseline (Options.NoopAddr says why).
		for _, a := range strings.Split(opts.Addr, ",") {
			if err := reachable(ctx, a); err != nil {
				fmt.Fprintf(stderr, "m1 bench: %s: %v\n", TargetM1, err)
				return 2
			}
		}
		exe, err := os.Executable()
		if err == nil {
			if noopProc, err = startNoopProcess(ctx, exe, stderr); err == nil {
				defer noopProc.stop()
				opts.NoopAddr = noopProc.addr
			}
		}
		if err != nil {
			fmt.Fprintln(stderr, "m1 bench:", err)
			return 2
		}
	}

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(stderr, "m1 bench:", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "m1 bench:", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := Run(ctx, opts)
	if err != nil {
		fmt.Fprintln(stderr, "m1 bench:", err)
		return 2
	}
	if noopProc != nil {
		rep.Targets[0].PID = noopProc.cmd.Process.Pid
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = WriteTable(stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "m1 bench:", err)
		return 2
	}
	code := 0
	for _, t := range rep.Targets {
		if t.Errors > 0 {
			fmt.Fprintf(stderr, "m1 bench: %s: %d of %d calls failed or were not allowed\n", t.Name, t.Errors, t.Calls)
			code = 1
		}
	}
	return code
}

const synopsis = "m1 bench [flags]"

const description = `Measure ext_authz Check throughput and latency of m1-authz (in-process with
the default policy, or --addr) against a no-op ext_authz server, with ghz on
127.0.0.1, in alternating rounds. The no-op server runs where m1-authz runs:
in-process, or with --addr in a process of its own (this m1 started again as
m1 bench --serve-noop; --noop-addr names a running one). --mode picks the
path: cache (an MCP tools/call of read_file that the default policy allows,
answered from the decision cache), approval (write_file with a fresh EdDSA
approval on every call, each used once: signature, durable single use,
audit), grant (one grant of write_file reused by every call: verified-token
cache and use counter). In-process sidecars get a key the run generates;
--addr needs --key. A deny counts as an error.

Exit status: 0 every call allowed, 1 some calls failed or were denied (the
report is still written), 2 error (bad flags, m1-authz unreachable, no call
completed).`

// printUsage writes the help as every m1 command does: synopsis,
// description, then each flag as --name with its default.
func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage:\n  %s\n\n%s\n\nFlags:\n", synopsis, description)
	fs.VisitAll(func(f *flag.Flag) {
		typ, text := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if typ != "" {
			line += " " + typ
		}
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
			text += fmt.Sprintf(" (default %q)", f.DefValue)
		}
		fmt.Fprintf(w, "%s\n      %s\n", line, text)
	})
}

// WriteTable writes rep as a table: one row per target, then the ratio of
// m1-authz to the baseline, then the decision cache and the most frequent
// errors, if any.
func WriteTable(w io.Writer, rep Report) error {
	rows := [][]string{{"target", "checks/s", "p50", "p99", "errors", "calls"}}
	for _, t := range rep.Targets {
		name := t.Name
		if t.Name == TargetM1 && t.InProcess {
			name += " (in-process)"
		}
		if t.TimedOut {
			name += " (time limit)"
		}
		rows = append(rows, []string{name, strconv.FormatFloat(t.ChecksPerSec, 'f', 0, 64), ms(t.P50), ms(t.P99),
			strconv.FormatUint(t.Errors, 10), strconv.FormatUint(t.Calls, 10)})
	}
	if r := rep.Ratio; r.Throughput != 0 {
		rows = append(rows, []string{TargetM1 + " / " + TargetNoop, times(r.Throughput), times(r.P50), times(r.P99), "", ""})
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		line := make([]byte, 0, 80)
		for i, cell := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(cell))
			if i == 0 {
				line = append(append(line, cell...), pad...)
			} else {
				line = append(append(append(line, "  "...), pad...), cell...)
			}
		}
		if _, err := fmt.Fprintf(w, "%s\n", strings.TrimRight(string(line), " ")); err != nil {
			return err
		}
	}

	o := rep.Options
	load := strconv.Itoa(o.Requests) + " calls"
	if o.Duration > 0 {
		load = o.Duration.String()
	}
	if o.Rate > 0 {
		load += " at " + strconv.FormatFloat(o.Rate, 'f', -1, 64) + "/s"
	}
	mode := rep.Mode
	if o.Audit {
		mode += ", audit on"
	}
	if rep.Redis {
		mode += ", Redis"
	} else if mode != ModeCache && o.Addr == "" {
		mode += ", uses in SQLite"
	}
	if len(rep.Targets) > 1 && rep.Targets[1].Sidecars > 1 {
		mode += ", " + strconv.Itoa(rep.Targets[1].Sidecars) + " sidecars"
	}
	if len(rep.Targets) > 0 && !rep.Targets[0].InProcess {
		mode += ", no-op server in its own process"
	}
	fmt.Fprintf(w, "\nmode %s; concurrency %d, connections %d, %s per target in %d alternating rounds after %d warm-up calls, GOMAXPROCS %d\n",
		mode, o.Concurrency, o.Connections, load, rep.Rounds, o.Warmup, rep.GOMAXPROCS)
	for _, t := range rep.Targets {
		if c := t.Cache; c != nil {
			if c.Enabled {
				fmt.Fprintf(w, "%s decision cache: %d hits, %d misses\n", t.Name, c.Hits, c.Misses)
			} else {
				fmt.Fprintf(w, "%s decision cache off: %s\n", t.Name, c.Why)
			}
		}
		if sp := t.Spread(); sp > noisySpread {
			fmt.Fprintf(w, "warning: %s's rounds differ by %.0f%% in checks/s: something else was using the CPU; rerun on an idle machine\n", t.Name, 100*sp)
		}
		if t.MintedLive > 0 {
			fmt.Fprintf(w, "warning: %s: %d approvals were minted during measured rounds (the pre-minted ones ran out); its figures read low\n", t.Name, t.MintedLive)
		}
		for _, e := range topErrors(t.ErrorCounts, 3) {
			fmt.Fprintf(w, "%s error: %s\n", t.Name, e)
		}
	}
	return nil
}

// noisySpread is the Target.Spread above which WriteTable warns that the
// figures are not to be trusted.
const noisySpread = 0.25

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64) + "ms"
}

func times(r float64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatFloat(r, 'f', 2, 64) + "×"
}
