package cli

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/m1-agent/m1/internal/checkpoint"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

const auditUsage = `Usage:
  m1 audit verify     [--db URL] [--writer W] [--checkpoints DIR --checkpoint-keys JWKS] [--json]
  m1 audit export     [--db URL] --since T [--until T] [--run ID] [--agent A] [--format jsonl|csv|calls] [--limit N]
  m1 audit checkpoint [--db URL] --out DIR|URL --key KEY.jwk [--writer W]
  m1 audit prune      [--db URL] [--older-than AGE] [--kind TARGET]...

Commands:
  verify      walk the hash chains and name the first edited, inserted or
              deleted event, and with --checkpoints a chain cut short
              (exit 0 intact, 1 broken, 2 error)
  export      stream events to stdout as JSON lines or CSV, in time order, or
              each call's decision and outcome side by side
  checkpoint  sign each chain's head and write it where it is never
              overwritten
  prune       delete what is past retention (default: the retention policy)

The store is --db URL or $M1_DATABASE_URL (postgres://…, sqlite:///path, or
a path ending .db); without either, the SQLite file m1.db under --data-dir
or $M1_DATA_DIR (default ./data), the file m1-authz writes by default.
Run 'm1 audit <command> -h' for its flags; docs/AUDIT.md for the schema.
`

func runAudit(ctx context.Context, c *cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, auditUsage)
		return exitError
	}
	switch args[0] {
	case "verify":
		return runAuditVerify(ctx, c, args[1:])
	case "export":
		return runAuditExport(ctx, c, args[1:])
	case "checkpoint":
		return runAuditCheckpoint(ctx, c, args[1:])
	case "prune":
		return runAuditPrune(ctx, c, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, auditUsage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "m1 audit: unknown command %q\n\n%s", args[0], auditUsage)
	return exitError
}

// retentionOrder is the order prune applies the retention policy in: tool
// calls and proposals before the runs whose pruning would take theirs
// along uncounted.
func retentionOrder() []store.Retention {
	rank := map[string]int{store.PruneEvents: 0, store.PruneToolCalls: 1, store.PruneProposals: 2, store.PruneRuns: 3, store.PruneRevokedTokens: 4}
	r := slices.Clone(store.DefaultRetention)
	slices.SortStableFunc(r, func(a, b store.Retention) int { return rank[a.Target] - rank[b.Target] })
	return r
}

// retentionTable describes the retention policy for prune's help.
func retentionTable() string {
	const day = 24 * time.Hour
	var b strings.Builder
	for _, r := range retentionOrder() {
		keep := r.Keep.String()
		switch {
		case r.Keep == store.Year:
			keep = "1 year"
		case r.Keep%store.Year == 0:
			keep = fmt.Sprintf("%d years", r.Keep/store.Year)
		case r.Keep == day:
			keep = "1 day"
		case r.Keep%day == 0:
			keep = fmt.Sprintf("%d days", r.Keep/day)
		}
		fmt.Fprintf(&b, "  %-15s %s\n", pruneTargetName(r.Target), keep)
	}
	return b.String()
}

// pruneTargetNames maps the --kind names to store prune targets.
func pruneTargetNames() map[string]string {
	return map[string]string{
		"events":         store.PruneEvents,
		"tool_calls":     store.PruneToolCalls,
		"proposals":      store.PruneProposals,
		"runs":           store.PruneRuns,
		"revoked_tokens": store.PruneRevokedTokens,
	}
}

// pruneTargetName is the --kind name of a store prune target.
func pruneTargetName(target string) string {
	for name, t := range pruneTargetNames() {
		if t == target {
			return name
		}
	}
	return target
}

// auditEnv gives the audit commands' store flags their environment
// variables, those m1-authz reads.
func auditEnv() map[string]string {
	return map[string]string{"db": "M1_DATABASE_URL", "data-dir": "M1_DATA_DIR"}
}

// storeFlags name the audit store.
type storeFlags struct {
	db, dataDir *string
}

func addStoreFlags(fs *flagSet) storeFlags {
	return storeFlags{
		db:      fs.String("db", "", "the store's `URL`: postgres://…, sqlite:///path, or a path ending .db (prefer the environment variable for a URL with a password: flags show in ps)"),
		dataDir: fs.String("data-dir", "./data", "without --db: the `directory` of m1-authz's SQLite file m1.db"),
	}
}

// openTimeout bounds connecting to the store and applying its migrations.
const openTimeout = 15 * time.Second

// open opens the store. A SQLite file must exist already: these commands
// read an audit trail, and an empty file created by a typo would verify
// clean.
func (f storeFlags) open(ctx context.Context) (store.Store, error) {
	kind, target, err := backend.Parse(*f.db, *f.dataDir)
	if err != nil {
		return nil, err
	}
	if kind == backend.SQLite {
		if _, err := os.Stat(target); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no audit store at %s: set --db or $M1_DATABASE_URL, or --data-dir or $M1_DATA_DIR to m1-authz's", target)
		} else if err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	st, err := backend.Open(ctx, *f.db, *f.dataDir)
	if err != nil {
		return nil, fmt.Errorf("open the audit store: %w", err)
	}
	return st, nil
}

const auditVerifyDescription = `Walk every writer's hash chain (or --writer's) and report, per chain,
"ok" and how many events verified, or the first break: the event's seq
and id, and whether it was edited, inserted or deleted. A chain whose head
was pruned is verified from its checkpoint.

With --checkpoints DIR (signed chain heads that m1 audit checkpoint or
m1-authz wrote, verified with --checkpoint-keys, the checkpoint key's public
JWKS, or else with $M1_AUDIT_CHECKPOINT_KEY_FILE's public half; with
neither, read unverified, with a warning) verify also reports a chain that
ends before a head it was signed to hold (its newest events were deleted:
"cut short", with the missing seqs), a chain whose event at a signed head
has another hash (rewritten), a signed chain the store no longer has, and
a checkpoint file that does not verify. Without checkpoints, events deleted from the tail of a chain, or a
chain rewritten whole by someone who can recompute every hash, cannot be
seen (docs/AUDIT.md).

Exit status: 0 every chain intact, 1 a chain is broken, 2 error.`

// chainReport is one chain's verification, as --json prints it.
type chainReport struct {
	Writer string `json:"writer"`
	OK     bool   `json:"ok"`
	// Events is how many events verified intact (before the break, if
	// any).
	Events int64 `json:"events"`
	// Checkpoint is the last pruned seq the chain was verified from, 0
	// when the chain was never pruned.
	Checkpoint int64 `json:"checkpoint,omitempty"`
	// LastSeq and LastHash are the last event verified intact (or the
	// checkpoint): a chain head to keep elsewhere, so that a later verify
	// can show the chain still holds it (tail deletion, rewrites).
	LastSeq  int64        `json:"last_seq"`
	LastHash string       `json:"last_hash"`
	Break    *breakReport `json:"break,omitempty"`
	// Signed is what the checkpoints (--checkpoints) say of the chain,
	// signed or, when Signed.Verified is false, read unverified; absent
	// without any for it.
	Signed *signedReport `json:"signed,omitempty"`
}

type breakReport struct {
	Kind   store.BreakKind `json:"kind"` // edited | inserted | deleted
	Seq    int64           `json:"seq"`
	ID     int64           `json:"id"`
	Reason string          `json:"reason"`
}

func runAuditVerify(ctx context.Context, c *cmdIO, args []string) int {
	env := auditEnv()
	env["checkpoint-keys"] = "M1_AUDIT_CHECKPOINT_KEYS"
	fs := newFlagSet("audit verify", "m1 audit verify [--db URL] [--writer W] [--checkpoints DIR --checkpoint-keys JWKS] [--json]", auditVerifyDescription, env)
	sf := addStoreFlags(fs)
	writer := fs.String("writer", "", "verify only this `writer`'s chain")
	asJSON := fs.Bool("json", false, "print one JSON object: each chain's result and the totals")
	cpDir := fs.String("checkpoints", "", "also check the chains against the signed checkpoints in this `DIR`")
	cpKeys := fs.String("checkpoint-keys", "", "the JWKS (or JWK) `file` of the checkpoint signing key's public half (default: $M1_AUDIT_CHECKPOINT_KEY_FILE's; none: signatures not verified)")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	var cps checkpointSet
	if *cpDir != "" {
		var err error
		if cps, err = loadCheckpoints(c, *cpDir, *cpKeys); err != nil {
			return fail(c, "audit verify", err)
		}
	}
	signed, badCps := cps.heads, cps.bad
	st, err := sf.open(ctx)
	if err != nil {
		return fail(c, "audit verify", err)
	}
	defer st.Close()

	var writers []string
	stored := map[string]bool{}
	if err := st.Chains(ctx, func(w string) error {
		stored[w] = true
		if *writer == "" || w == *writer {
			writers = append(writers, w)
		}
		return nil
	}); err != nil {
		return fail(c, "audit verify", err)
	}
	if *writer != "" && len(writers) == 0 && len(signed[*writer]) == 0 {
		return fail(c, "audit verify", fmt.Errorf("no chain %q in the store", *writer))
	}
	// Chains the checkpoints hold and the store does not: deleted whole.
	for w := range signed {
		if !stored[w] && (*writer == "" || w == *writer) {
			writers = append(writers, w)
		}
	}
	slices.Sort(writers)

	var reports []chainReport
	var intact, broken int
	var events int64
	var verr error
	for _, w := range writers {
		var r chainReport
		if stored[w] {
			r, err = verifyChain(ctx, st, w, signed[w])
		} else {
			r, err = missingChain(w, signed[w]), nil
		}
		if err != nil {
			verr = err
			break
		}
		if r.Signed != nil {
			r.Signed.Verified = cps.verified
		}
		events += r.Events
		if r.OK {
			intact++
		} else {
			broken++
		}
		if *asJSON {
			reports = append(reports, r)
			continue
		}
		printChainReport(c, r)
	}
	var badNames []string
	for name := range badCps {
		badNames = append(badNames, name)
	}
	slices.Sort(badNames)
	if !*asJSON {
		for _, name := range badNames {
			fmt.Fprintf(c.stdout, "BROKEN  checkpoint %s: %v\n", name, badCps[name])
		}
	}
	switch {
	case *asJSON:
		out := struct {
			OK     bool          `json:"ok"`
			Chains []chainReport `json:"chains"`
			Intact int           `json:"intact"`
			Broken int           `json:"broken"`
			Events int64         `json:"events"`
			// Checkpoints counts the checkpoints read, their signatures
			// verified when CheckpointsVerified (given with --checkpoints)
			// is true; BadCheckpoints names those that were refused, and
			// why.
			Checkpoints         int               `json:"checkpoints,omitempty"`
			CheckpointsVerified *bool             `json:"checkpoints_verified,omitempty"`
			BadCheckpoints      map[string]string `json:"bad_checkpoints,omitempty"`
			Error               string            `json:"error,omitempty"` // verification stopped
		}{OK: broken == 0 && len(badCps) == 0 && verr == nil, Chains: reports, Intact: intact, Broken: broken, Events: events, Checkpoints: cps.good}
		if *cpDir != "" {
			out.CheckpointsVerified = &cps.verified
		}
		if out.Chains == nil {
			out.Chains = []chainReport{}
		}
		for _, name := range badNames {
			if out.BadCheckpoints == nil {
				out.BadCheckpoints = map[string]string{}
			}
			out.BadCheckpoints[name] = badCps[name].Error()
		}
		if verr != nil {
			out.Error = verr.Error()
		}
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return fail(c, "audit verify", err)
		}
		fmt.Fprintf(c.stdout, "%s\n", b)
	case verr == nil && *cpDir != "":
		read := "signed"
		if !cps.verified {
			read = "unverified"
		}
		fmt.Fprintf(c.stdout, "%d chains: %d intact, %d broken; %d events verified; %d %s checkpoints, %d bad\n",
			intact+broken, intact, broken, events, cps.good, read, len(badCps))
	case verr == nil:
		fmt.Fprintf(c.stdout, "%d chains: %d intact, %d broken; %d events verified\n", intact+broken, intact, broken, events)
	}
	switch {
	case broken > 0 || len(badCps) > 0:
		if verr != nil {
			fmt.Fprintf(c.stderr, "m1 audit verify: stopped: %v\n", verr)
		}
		return exitDeny // a break found is a finding, even if verification then stopped
	case verr != nil:
		return fail(c, "audit verify", verr)
	}
	return exitOK
}

// printChainReport writes one chain's lines of verify's text output.
func printChainReport(c *cmdIO, r chainReport) {
	w := r.Writer
	if r.OK {
		fmt.Fprintf(c.stdout, "ok      %s  %d events", w, r.Events)
		switch {
		case r.Checkpoint > 0 && r.Events == 0:
			fmt.Fprintf(c.stdout, " (pruned through seq %d)", r.Checkpoint)
		case r.Checkpoint > 0:
			fmt.Fprintf(c.stdout, " (seq %d to %d; pruned through seq %d)", r.Checkpoint+1, r.LastSeq, r.Checkpoint)
		}
		switch s := r.Signed; {
		case s != nil && s.Verified:
			fmt.Fprintf(c.stdout, " (holds its signed head, seq %d)", s.Seq)
		case s != nil:
			fmt.Fprintf(c.stdout, " (holds its unverified checkpoint head, seq %d)", s.Seq)
		}
		fmt.Fprintln(c.stdout)
		return
	}
	if b := r.Break; b != nil {
		switch {
		case b.Kind == store.Deleted && b.ID == 0: // the whole chain
			fmt.Fprintf(c.stdout, "BROKEN  %s  seq %d deleted: %s\n", w, b.Seq, b.Reason)
		case b.Kind == store.Deleted:
			fmt.Fprintf(c.stdout, "BROKEN  %s  seq %d deleted (the next event found is id %d): %s\n", w, b.Seq, b.ID, b.Reason)
		default:
			fmt.Fprintf(c.stdout, "BROKEN  %s  seq %d (id %d) %s: %s\n", w, b.Seq, b.ID, b.Kind, b.Reason)
		}
	}
	switch s := r.Signed; {
	case s == nil || s.Finding == "":
	case s.Finding == findingCutShort:
		fmt.Fprintf(c.stdout, "BROKEN  %s  cut short: seq %d to %d missing: %s\n", w, s.FirstMissing, s.LastMissing, s.Reason)
	case s.Finding == findingMissing:
		fmt.Fprintf(c.stdout, "BROKEN  %s  chain missing: seq %d to %d deleted: %s\n", w, s.FirstMissing, s.LastMissing, s.Reason)
	default:
		fmt.Fprintf(c.stdout, "BROKEN  %s  %s: %s\n", w, s.Finding, s.Reason)
	}
}

// verifyChain streams one chain through a store.Verifier and compares it
// with its signed heads (none: signed is empty). err is for a chain that
// could not be read; a break is in the report.
func verifyChain(ctx context.Context, st store.Store, writer string, signed []checkpoint.SignedHead) (chainReport, error) {
	r := chainReport{Writer: writer}
	var v store.Verifier
	streamed := false
	hs := newHeads(signed)
	broken := false
	err := st.Chain(ctx, writer, func(e store.Event) error {
		if !streamed && e.Kind == store.KindCheckpoint && e.ID == 0 {
			r.Checkpoint = e.Seq
		}
		streamed = true
		hs.see(e)
		if broken {
			return nil
		}
		if err := v.Add(e); err != nil {
			broken = true
			if len(signed) == 0 {
				return err // nothing more to learn from the rest
			}
		}
		return nil
	})
	if err == nil {
		err = v.Close()
	}
	var b *store.Break
	switch {
	case errors.As(err, &b):
		r.Break = &breakReport{Kind: b.Kind, Seq: b.Seq, ID: b.ID, Reason: b.Reason}
	case err != nil:
		return r, fmt.Errorf("verify chain %q: %w", writer, err)
	case !streamed:
		// The chain is registered (its first batch was stored) but holds
		// neither an event nor a checkpoint: only deleting every event
		// behind the store's back does that.
		r.Break = &breakReport{Kind: store.Deleted, Seq: 1, Reason: "the chain is registered but holds no event and no checkpoint: every event was deleted"}
	default:
		r.OK = true
	}
	r.Events = v.Verified()
	r.LastSeq, r.LastHash = v.Last()
	if r.Signed = hs.report(streamed); r.Signed != nil && r.Signed.Finding != "" {
		r.OK = false
	}
	return r, nil
}

const auditExportDescription = `Stream the events that --since, --until, --run and --agent select to
stdout, in (time, id) order, without holding them in memory.

T is an RFC 3339 time (2026-03-01T12:00:00Z), "now", or an age back from
now: a Go duration (90m, 24h) or whole days, weeks or years (7d, 2w, 1y; a
year is 365 days). --since is inclusive, --until exclusive.

  jsonl  one event per line, as JSON (the fields of docs/AUDIT.md)
  csv    a header row, then one row per event: every field, times in RFC
         3339 UTC with microseconds, args as its JSON text (empty: none),
         args_truncated (true: args left out for their size) last
  calls  one row per decision, side by side with what came of it: the
         tool's outcome from Envoy's access log (succeeded or failed, the
         tool's status, its time; "none" for an allowed tool call without
         one) and the orchestrator's dispatch result. Held in memory: use
         with --run (m1 audit export --run RUN --since 7d --format calls)

Every exported event carries writer, seq, prev_hash and hash, so the
export can be re-verified without the store (docs/AUDIT.md).

Exit status: 0 done, 2 error.`

// csvHeader names the CSV columns: every field of store.Event, by its JSON
// name, in the struct's order, except args_truncated (added later), which
// comes last so that the other columns keep their places.
var csvHeader = []string{
	"id", "decision_id", "time", "kind", "principal", "run_id", "proposal_id", "tool", "args_sha256", "args",
	"decision", "reason", "detail", "status", "policy_revision", "token_jti", "latency_us", "cache_tier",
	"writer", "seq", "prev_hash", "hash", "args_truncated",
}

// csvTime is how CSV times are written: RFC 3339, UTC, microseconds.
const csvTime = "2006-01-02T15:04:05.000000Z07:00"

func csvRecord(e store.Event) []string {
	return []string{
		strconv.FormatInt(e.ID, 10), e.DecisionID, e.Time.UTC().Format(csvTime), e.Kind, e.Principal, e.RunID,
		e.ProposalID, e.Tool, e.ArgsSHA256, string(e.Args), e.Decision, e.Reason, e.Detail, strconv.Itoa(e.Status),
		e.PolicyRevision, e.TokenJTI, strconv.FormatInt(e.LatencyMicros, 10), e.CacheTier,
		e.Writer, strconv.FormatInt(e.Seq, 10), e.PrevHash, e.Hash, strconv.FormatBool(e.ArgsTruncated),
	}
}

func runAuditExport(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("audit export",
		"m1 audit export [--db URL] --since T [--until T] [--run ID] [--agent A] [--format jsonl|csv|calls] [--limit N]",
		auditExportDescription, auditEnv())
	sf := addStoreFlags(fs)
	since := fs.String("since", "", "export events at or after `T` (required)")
	until := fs.String("until", "now", "export events before `T`")
	runID := fs.String("run", "", "only the events of this orchestrator run `id`")
	agent := fs.String("agent", "", "only the events of this `agent` (the principal)")
	format := fs.String("format", "jsonl", "output `format`: jsonl, csv, or calls (decision and outcome side by side)")
	limit := fs.Int("limit", 0, "at most `N` events (0: no limit)")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		code, _ := usageError(fs, c, fmt.Errorf(format, a...))
		return code
	}
	now := time.Now()
	f := store.Filter{RunID: *runID, Agent: *agent, Limit: *limit}
	var err error
	switch {
	case *since == "":
		return usageErr("--since is required (an RFC 3339 time, or an age such as 24h or 7d)")
	case *format != "jsonl" && *format != "csv" && *format != "calls":
		return usageErr("--format %q: want jsonl, csv or calls", *format)
	case *limit < 0:
		return usageErr("--limit must not be negative")
	}
	if f.Since, err = parseWhen(*since, now); err != nil {
		return usageErr("--since %v", err)
	}
	if f.Until, err = parseWhen(*until, now); err != nil {
		return usageErr("--until %v", err)
	}
	if !f.Since.Before(f.Until) {
		return usageErr("--since (%s) must be before --until (%s)", f.Since.UTC().Format(time.RFC3339), f.Until.UTC().Format(time.RFC3339))
	}

	st, err := sf.open(ctx)
	if err != nil {
		return fail(c, "audit export", err)
	}
	defer st.Close()

	var write func(store.Event) error
	var flush func() error
	switch *format {
	case "calls":
		v := newCallsView()
		write = v.add
		flush = func() error { return v.print(c.stdout) }
	case "csv":
		w := csv.NewWriter(c.stdout) // buffered
		if err := w.Write(csvHeader); err != nil {
			return fail(c, "audit export", err)
		}
		write = func(e store.Event) error { return w.Write(csvRecord(e)) }
		flush = func() error { w.Flush(); return w.Error() }
	default:
		w := bufio.NewWriterSize(c.stdout, 64<<10)
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		write = func(e store.Event) error {
			if len(e.Args) > 0 && !json.Valid(e.Args) {
				// Only a row written behind the store's back holds
				// that; keep its text rather than stop the export.
				fmt.Fprintf(c.stderr, "m1 audit export: event id %d: args are not JSON; exported as a JSON string (run m1 audit verify)\n", e.ID)
				e.Args, _ = json.Marshal(string(e.Args))
			}
			return enc.Encode(e)
		}
		flush = w.Flush
	}
	err = st.Events(ctx, f, write)
	if ferr := flush(); err == nil {
		err = ferr
	}
	if err != nil {
		return fail(c, "audit export", err)
	}
	return exitOK
}

// parseWhen reads an export bound: an RFC 3339 time, "now", or an age
// back from now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "now" {
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := parseAge(s)
	if errors.Is(err, errNotAge) {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-03-01T12:00:00Z), now, or an age such as 24h or 7d", s)
	}
	if err != nil {
		return time.Time{}, err
	}
	return now.Add(-d), nil
}

// errNotAge is wrapped by parseAge's error for text that is no age at all.
var errNotAge = errors.New("want a duration such as 720h, 30d, 2w or 2y")

// parseAge reads an age: a Go duration (720h, 90m) or a whole number of
// days, weeks or years (30d, 2w, 2y; a year is 365 days). It is never
// negative.
func parseAge(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil && len(s) >= 2 {
		const day = 24 * time.Hour
		per := map[byte]time.Duration{'d': day, 'w': 7 * day, 'y': 365 * day}[s[len(s)-1]]
		digits := s[:len(s)-1]
		n, perr := strconv.ParseInt(digits, 10, 64)
		switch {
		case per == 0 || perr != nil || strings.TrimLeft(digits, "0123456789") != "":
		case n > int64((1<<63-1)/per):
			return 0, fmt.Errorf("age %q is too long", s)
		default:
			d, err = time.Duration(n)*per, nil
		}
	}
	switch {
	case err != nil:
		return 0, fmt.Errorf("age %q: %w", s, errNotAge)
	case d < 0:
		return 0, fmt.Errorf("age %q is negative", s)
	}
	return d, nil
}

// auditPruneDescription is prune's help around the retention table.
const auditPruneDescription = `Delete what is past retention and print how many rows each target lost.

Without --older-than, the retention policy applies (m1-authz's scheduled
prune applies the same):
%s
Revoked tokens are kept that long after the revocation expired (one
without expiry stays until it is lifted); pruning a run takes its
remaining tool calls and proposals with it. --older-than AGE (720h, 30d,
2y; a year is 365 days) applies one age to every target; --kind limits the
targets.

Events are pruned from the head of each chain, up to its first event to
keep, so that pruning never opens a gap: the chain keeps a checkpoint and
m1 audit verify still verifies what remains. Export first what you must
keep longer.

Exit status: 0 done, 2 error.`

func runAuditPrune(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("audit prune", "m1 audit prune [--db URL] [--older-than AGE] [--kind TARGET]...",
		fmt.Sprintf(auditPruneDescription, retentionTable()), auditEnv())
	sf := addStoreFlags(fs)
	olderThan := fs.String("older-than", "", "prune what is older than this `age` (default: the retention policy)")
	var kinds listFlag
	fs.Var(&kinds, "kind", "prune only this `target`: events, tool_calls, proposals, runs, revoked_tokens (repeatable or comma-separated; default: all)")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		code, _ := usageError(fs, c, fmt.Errorf(format, a...))
		return code
	}
	var age time.Duration
	if *olderThan != "" {
		var err error
		if age, err = parseAge(*olderThan); err != nil {
			return usageErr("--older-than %v", err)
		}
		if age == 0 {
			return usageErr("--older-than must be positive")
		}
	}
	names := pruneTargetNames()
	var only []string
	for _, k := range kinds {
		for name := range strings.SplitSeq(k, ",") {
			name = strings.TrimSpace(name)
			t, ok := names[name]
			if !ok {
				return usageErr("--kind %q: want events, tool_calls, proposals, runs or revoked_tokens", name)
			}
			only = append(only, t)
		}
	}

	st, err := sf.open(ctx)
	if err != nil {
		return fail(c, "audit prune", err)
	}
	defer st.Close()

	now := time.Now()
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tDELETED\tBEFORE")
	for _, r := range retentionOrder() {
		if len(only) > 0 && !slices.Contains(only, r.Target) {
			continue
		}
		keep := r.Keep
		if age > 0 {
			keep = age
		}
		before := now.Add(-keep)
		n, err := st.Prune(ctx, before, r.Target)
		fmt.Fprintf(tw, "%s\t%d\t%s\n", pruneTargetName(r.Target), n, before.UTC().Format(time.RFC3339))
		if err != nil {
			tw.Flush()
			return fail(c, "audit prune", fmt.Errorf("prune %s: %w", pruneTargetName(r.Target), err))
		}
	}
	if err := tw.Flush(); err != nil {
		return fail(c, "audit prune", err)
	}
	return exitOK
}
