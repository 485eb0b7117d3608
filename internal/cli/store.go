package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

const storeUsage = `Usage:
  m1 store status  [--db URL] [--json]
  m1 store backup  --out FILE [--db URL] [--settle D] [--force]
  m1 store restore --from FILE [--data-dir DIR | --db URL] [--force]

Commands:
  status   the store's schema against this binary's (and whether it can run
           against it), size, rows per table, and each audit chain's
           writer, length, head and last event time (exit 1: the schema is
           one this binary refuses)
  backup   a consistent copy of the SQLite store taken while m1-authz writes
           to it, verified (integrity, schema, every chain) before it is
           kept; for PostgreSQL use pg_dump
  restore  put a backup in place of the SQLite store, after verifying it
           (a file that fails is refused before anything is written to the
           data directory); the store replaced is kept beside it as .bak

The store is --db URL or $M1_DATABASE_URL (postgres://…, sqlite:///path, or
a path ending .db); without either, the SQLite file m1.db under --data-dir
or $M1_DATA_DIR (default ./data), the file m1-authz writes by default.
Run 'm1 store <command> -h' for its flags; docs/STORE.md for the procedures.
`

func runStore(ctx context.Context, c *cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, storeUsage)
		return exitError
	}
	switch args[0] {
	case "status":
		return runStoreStatus(ctx, c, args[1:])
	case "backup":
		return runStoreBackup(ctx, c, args[1:])
	case "restore":
		return runStoreRestore(ctx, c, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, storeUsage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "m1 store: unknown command %q\n\n%s", args[0], storeUsage)
	return exitError
}

const storeStatusDescription = `Report on the store without changing it (no migration is applied, no file
created): where it is and its backend; its schema version against this
binary's, and whether this binary can run against it (a newer schema runs
only when its migrations declare themselves compatible: docs/STORE.md);
the migrations it recorded; its size on disk (SQLite, with its write-ahead
log) or the database's size (PostgreSQL); the rows of each table; and per
audit chain its writer, events, head (last seq and hash) and last event time.

Exit status: 0 this binary can run against the store, 1 it cannot (the
schema is newer and not declared compatible), 2 error.`

// statusReport is what --json prints.
type statusReport struct {
	store.Status
	// Compatible says whether this binary can run against the store.
	Compatible bool `json:"compatible"`
	// SchemaDetail describes the schema in one line.
	SchemaDetail string `json:"schema_detail"`
}

func runStoreStatus(ctx context.Context, c *cmdIO, args []string) int {
	fl := newFlagSet("store status", "m1 store status [--db URL] [--data-dir DIR] [--json]", storeStatusDescription, auditEnv())
	sf := addStoreFlags(fl)
	asJSON := fl.Bool("json", false, "print one JSON object")
	if code, ok := parse(fl, c, args, 0, 0); !ok {
		return code
	}
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	defer cancel()
	st, err := backend.Inspect(octx, *sf.db, *sf.dataDir)
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("no store at %s: set --db or $M1_DATABASE_URL, or --data-dir or $M1_DATA_DIR to m1-authz's", st.Location)
	}
	if err != nil {
		return fail(c, "store status", err)
	}
	code := exitOK
	if !st.Schema.Compatible() {
		code = exitDeny
	}
	if *asJSON {
		r := statusReport{Status: st, Compatible: st.Schema.Compatible(), SchemaDetail: st.Schema.String()}
		if r.Migrations == nil {
			r.Migrations = []store.AppliedMigration{}
		}
		if r.Tables == nil {
			r.Tables = []store.TableRows{}
		}
		if r.Chains == nil {
			r.Chains = []store.ChainStatus{}
		}
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return fail(c, "store status", err)
		}
		fmt.Fprintf(c.stdout, "%s\n", b)
		return code
	}
	w := c.stdout
	fmt.Fprintf(w, "store       %s %s\n", st.Backend, st.Location)
	fmt.Fprintf(w, "size        %s\n", formatBytes(st.Bytes))
	fmt.Fprintf(w, "schema      %s\n", st.Schema)
	if err := st.Schema.Err(); err != nil {
		fmt.Fprintf(w, "            %v\n", err)
	}
	var ms []string
	for _, m := range st.Migrations {
		s := fmt.Sprintf("%d %s", m.Version, m.Name)
		if m.CompatibleWith > 0 {
			s += fmt.Sprintf(" (compatible with %d)", m.CompatibleWith)
		}
		ms = append(ms, s)
	}
	fmt.Fprintf(w, "migrations  %s\n", strings.Join(ms, ", "))
	fmt.Fprintln(w, "\nTABLES")
	nameW, rowsW := 0, 0
	for _, t := range st.Tables {
		nameW, rowsW = max(nameW, len(t.Name)), max(rowsW, len(fmt.Sprint(t.Rows)))
	}
	for _, t := range st.Tables {
		fmt.Fprintf(w, "  %-*s  %*d rows\n", nameW, escapeTerminal(t.Name), rowsW, t.Rows)
	}
	var events int64
	for _, ch := range st.Chains {
		events += ch.Events
	}
	fmt.Fprintf(w, "\nCHAINS (%d, %d events)\n", len(st.Chains), events)
	if len(st.Chains) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  WRITER\tEVENTS\tHEAD SEQ\tHEAD HASH\tLAST EVENT\tPRUNED THROUGH")
		for _, ch := range st.Chains {
			last, pruned := "-", "-"
			if !ch.LastEvent.IsZero() {
				last = ch.LastEvent.UTC().Format(time.RFC3339)
			}
			if ch.PrunedSeq > 0 {
				pruned = fmt.Sprint(ch.PrunedSeq)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%s\t%s\n", escapeTerminal(ch.Writer), ch.Events, ch.HeadSeq, short(ch.HeadHash), last, pruned)
		}
		tw.Flush()
	}
	return code
}

// short is a hash's first 16 hex digits.
func short(h string) string {
	if len(h) > 16 {
		return h[:16]
	}
	if h == "" {
		return "-"
	}
	return h
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}

// pgDumpHint is what backup and restore say for a PostgreSQL store.
const pgDumpHint = `the store is PostgreSQL: back it up with pg_dump and restore it with pg_restore, e.g.
  pg_dump --format=custom --file=m1.dump "$M1_DATABASE_URL"
  pg_restore --clean --if-exists --dbname="$M1_DATABASE_URL" m1.dump
then check it with 'm1 store status' and 'm1 audit verify' (docs/STORE.md)`

// sqliteTarget returns the SQLite file the store flags name, or an error
// for a PostgreSQL store (exit 2, with pgDumpHint).
func sqliteTarget(sf storeFlags) (string, error) {
	kind, target, err := backend.Parse(*sf.db, *sf.dataDir)
	if err != nil {
		return "", err
	}
	if kind == backend.Postgres {
		return "", errors.New(pgDumpHint)
	}
	return target, nil
}

// spools are the audit spools m1-authz and m1-orchestrator keep in the
// data directory: events not yet in the store.
var spools = []string{"audit-spool.jsonl", "orchestrator-audit-spool.jsonl"}

const storeBackupDescription = `Write a consistent copy of the SQLite store to --out while m1-authz (and
m1-orchestrator) go on writing to it: one read transaction (SQLite's VACUUM
INTO), which neither blocks them nor sees half of a batch. The copy is
verified as 'm1 audit verify' and 'm1 store restore' would (SQLite's
integrity check, a schema this binary can read, every hash chain intact)
before it is renamed to --out: a file at --out is a verified backup. It is
compact, has no write-ahead log, and is created mode 0600.

m1-authz writes a decision's audit event within 100 ms of answering it
while the store answers (docs/AUDIT.md); the copy is taken --settle after
the command starts, so that every decision answered before the command
started is in it. Events m1-authz spooled because the store was
unreachable are not in the store, hence not in the backup: the command
says so.

For PostgreSQL it exits 2 and says how to use pg_dump.

Exit status: 0 backup written and verified, 1 the copy fails verification
(nothing is written to --out; run 'm1 audit verify' on the store), 2 error.`

func runStoreBackup(ctx context.Context, c *cmdIO, args []string) int {
	fl := newFlagSet("store backup", "m1 store backup --out FILE [--db URL] [--data-dir DIR] [--settle D] [--force]", storeBackupDescription, auditEnv())
	sf := addStoreFlags(fl)
	out := fl.String("out", "", "the backup `file` to write (its directory must exist)")
	settle := fl.Duration("settle", time.Second, "wait this long before the copy, so that events of decisions answered before the command started are in it (0: copy at once)")
	force := fl.Bool("force", false, "overwrite --out if it exists")
	if code, ok := parse(fl, c, args, 0, 0); !ok {
		return code
	}
	switch {
	case *out == "":
		code, _ := usageError(fl, c, errors.New("--out is required"))
		return code
	case *settle < 0:
		code, _ := usageError(fl, c, errors.New("--settle must not be negative"))
		return code
	}
	src, err := sqliteTarget(sf)
	if err != nil {
		return fail(c, "store backup", err)
	}
	if _, err := os.Stat(src); err != nil {
		return fail(c, "store backup", fmt.Errorf("no store at %s: set --db or $M1_DATABASE_URL, or --data-dir or $M1_DATA_DIR to m1-authz's", src))
	}
	if same, _ := sameFile(src, *out); same {
		return fail(c, "store backup", fmt.Errorf("--out %s is the store itself", *out))
	}
	if _, err := os.Lstat(*out); err == nil && !*force {
		return fail(c, "store backup", fmt.Errorf("%s exists: --force overwrites it", *out))
	}
	started := time.Now()
	if *settle > 0 {
		select {
		case <-time.After(*settle):
		case <-ctx.Done():
			return fail(c, "store backup", ctx.Err())
		}
	}
	dir, base := filepath.Split(*out)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fail(c, "store backup", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	keep := false
	defer func() {
		if !keep {
			removeDB(tmpName)
		}
	}()
	if err := os.Chmod(tmpName, 0o600); err != nil {
		return fail(c, "store backup", err)
	}
	snapAt := time.Now()
	if err := sqlite.Snapshot(ctx, src, tmpName); err != nil {
		return fail(c, "store backup", err)
	}
	v, err := verifyBackup(ctx, tmpName, dir)
	if err != nil {
		fmt.Fprintf(c.stderr, "m1 store backup: the copy of %s fails verification, nothing written to %s: %v\nRun 'm1 audit verify' and 'm1 store status' on the store.\n", src, *out, err)
		return exitDeny
	}
	if err := syncFile(tmpName); err != nil {
		return fail(c, "store backup", err)
	}
	if err := os.Rename(tmpName, *out); err != nil {
		return fail(c, "store backup", err)
	}
	keep = true
	if err := syncDir(dir); err != nil {
		return fail(c, "store backup", err)
	}
	fi, _ := os.Stat(*out)
	fmt.Fprintf(c.stdout, "backup of %s written to %s: %s, schema %d, %d chains intact, %d events verified, as of %s (%s after the command started)\n",
		src, *out, formatBytes(fi.Size()), v.schema.Store, v.chains, v.events, snapAt.UTC().Format(time.RFC3339Nano), snapAt.Sub(started).Round(time.Millisecond))
	if *sf.db == "" {
		warnSpools(c, *sf.dataDir, "they are not in this backup")
	}
	return exitOK
}

// warnSpools says when the data directory holds audit events spooled
// because the store was unreachable.
func warnSpools(c *cmdIO, dataDir, what string) {
	for _, name := range spools {
		p := filepath.Join(dataDir, name)
		if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
			fmt.Fprintf(c.stderr, "note: %s holds %s of audit events spooled while the store was unreachable, not yet in the store: %s\n", p, formatBytes(fi.Size()), what)
		}
	}
}

// verified is what verifyBackup found.
type verified struct {
	schema store.SchemaStatus
	chains int
	events int64
}

// verifyBackup checks a backup file as restore must before it trusts it:
// SQLite's integrity check, a schema this binary can run against, and
// every hash chain intact (as m1 audit verify). It reads the file
// read-only. A file of an older schema cannot be read so before its
// migrations are applied: then a scratch copy in scratchDir is migrated
// and verified, and removed.
func verifyBackup(ctx context.Context, path, scratchDir string) (verified, error) {
	st, err := sqlite.OpenReadOnly(ctx, path)
	if errors.Is(err, store.ErrSchemaOlder) {
		return verifyMigrated(ctx, path, scratchDir)
	}
	if err != nil {
		return verified{}, err
	}
	defer st.Close()
	return verifyOpen(ctx, st)
}

// verifyMigrated verifies a copy of path after applying this binary's
// migrations to it.
func verifyMigrated(ctx context.Context, path, scratchDir string) (verified, error) {
	f, err := os.CreateTemp(scratchDir, ".m1-verify-*.db")
	if err != nil {
		return verified{}, err
	}
	scratch := f.Name()
	f.Close()
	defer removeDB(scratch)
	if _, err := copyFile(path, scratch); err != nil {
		return verified{}, err
	}
	st, err := sqlite.Open(ctx, scratch, sqlite.DefaultOptions())
	if err != nil {
		return verified{}, err
	}
	defer st.Close()
	return verifyOpen(ctx, st)
}

func verifyOpen(ctx context.Context, st *sqlite.Store) (verified, error) {
	var v verified
	if err := st.CheckIntegrity(ctx); err != nil {
		return v, err
	}
	schema, err := st.Schema(ctx)
	if err != nil {
		return v, err
	}
	v.schema = schema
	var writers []string
	if err := st.Chains(ctx, func(w string) error { writers = append(writers, w); return nil }); err != nil {
		return v, err
	}
	for _, w := range writers {
		r, err := verifyChain(ctx, st, w, nil)
		if err != nil {
			return v, err
		}
		if b := r.Break; b != nil {
			return v, fmt.Errorf("chain %q is broken at seq %d (%s): %s", w, b.Seq, b.Kind, b.Reason)
		}
		v.chains++
		v.events += r.Events
	}
	return v, nil
}

const storeRestoreDescription = `Put the backup --from in place of the SQLite store (m1.db under --data-dir
or $M1_DATA_DIR, or the file --db names), for m1-authz to open at its next
start. Stop m1-authz and m1-orchestrator first.

The backup is verified before anything is written to the data directory,
read-only and where it lies: SQLite's integrity check, a schema this binary
can run against (not newer, unless declared compatible), and every hash
chain intact, as 'm1 audit verify' would. A file that fails is refused
(exit 1) and the data directory is left as it was. (A backup of an older
schema is migrated in a scratch copy beside the store to be verified, and
the copy removed if it fails.)

Then it is copied into the data directory as a hidden temporary file
(checked to be the very bytes verified, and synced), and renamed over the
store: m1.db is never missing nor half-written. The store it replaces, if
any, is kept as m1.db.<time>.bak, and audit spools in the data directory
(events of the replaced store) are set aside likewise. A store that any
process has open is refused, as is replacing a store without --force.

A restored store's state epoch, if it keeps one, is cleared: approvals and
grants issued before the restore are refused (state_reset) at the next
start, as with a new data directory, because the uses recorded since the
backup are not in it.

For PostgreSQL it exits 2 and says how to use pg_restore.

Exit status: 0 restored, 1 refused (the backup fails verification, the
store is in use, or exists and --force is not given), 2 error.`

func runStoreRestore(ctx context.Context, c *cmdIO, args []string) int {
	fl := newFlagSet("store restore", "m1 store restore --from FILE [--data-dir DIR | --db URL] [--force]", storeRestoreDescription, auditEnv())
	sf := addStoreFlags(fl)
	from := fl.String("from", "", "the backup `file` (from m1 store backup)")
	force := fl.Bool("force", false, "replace an existing store (it is kept as .bak)")
	if code, ok := parse(fl, c, args, 0, 0); !ok {
		return code
	}
	if *from == "" {
		code, _ := usageError(fl, c, errors.New("--from is required"))
		return code
	}
	target, err := sqliteTarget(sf)
	if err != nil {
		return fail(c, "store restore", err)
	}
	refuse := func(format string, a ...any) int {
		fmt.Fprintf(c.stderr, "m1 store restore: refused: "+format+"\n", a...)
		return exitDeny
	}
	fi, err := os.Stat(*from)
	if err != nil {
		return fail(c, "store restore", err)
	}
	if !fi.Mode().IsRegular() {
		return fail(c, "store restore", fmt.Errorf("%s is not a regular file", *from))
	}
	if same, _ := sameFile(*from, target); same {
		return fail(c, "store restore", fmt.Errorf("--from %s is the store itself", *from))
	}
	// The cheap refusals first.
	_, statErr := os.Stat(target)
	exists := statErr == nil
	if exists {
		if inUse, err := sqlite.InUse(ctx, target); err != nil {
			return fail(c, "store restore", err)
		} else if inUse {
			return refuse("%s is in use: a process (m1-authz, m1-orchestrator, an m1 command) has it open; stop it first", target)
		}
		if !*force {
			return refuse("a store exists at %s: --force replaces it (it is kept as a .bak)", target)
		}
	} else if !errors.Is(statErr, fs.ErrNotExist) {
		return fail(c, "store restore", statErr)
	}

	// Verify the backup where it lies, read-only: nothing is written to
	// the data directory for a file that fails.
	sum, err := hashFile(*from)
	if err != nil {
		return fail(c, "store restore", err)
	}
	dir := filepath.Dir(target)
	ro, err := sqlite.OpenReadOnly(ctx, *from)
	older := errors.Is(err, store.ErrSchemaOlder)
	var v verified
	switch {
	case older:
	case err != nil:
		return refuse("%s fails verification: %v", *from, err)
	default:
		v, err = verifyOpen(ctx, ro)
		ro.Close()
		if err != nil {
			return refuse("%s fails verification: %v", *from, err)
		}
	}

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail(c, "store restore", err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(target)+".restore-*")
	if err != nil {
		return fail(c, "store restore", err)
	}
	staged := f.Name()
	f.Close()
	keep := false
	defer func() {
		if !keep {
			removeDB(staged)
		}
	}()
	if err := os.Chmod(staged, 0o600); err != nil {
		return fail(c, "store restore", err)
	}
	copied, err := copyFile(*from, staged)
	if err != nil {
		return fail(c, "store restore", err)
	}
	if !bytes.Equal(copied, sum) {
		return refuse("%s changed while it was being restored", *from)
	}
	if older {
		// Its migrations must be applied to read it: verify the staged
		// copy, migrated, as m1-authz would open it.
		st, err := sqlite.Open(ctx, staged, sqlite.DefaultOptions())
		if err != nil {
			return refuse("%s fails verification: %v", *from, err)
		}
		v, err = verifyOpen(ctx, st)
		st.Close()
		if err != nil {
			return refuse("%s fails verification: %v", *from, err)
		}
	}
	epochCleared, err := clearStateEpoch(ctx, staged)
	if err != nil {
		return fail(c, "store restore", err)
	}
	if err := syncFile(staged); err != nil {
		return fail(c, "store restore", err)
	}

	// Swap, if no process opened the store meanwhile.
	stamp := time.Now().UTC().Format("20060102T150405Z")
	var bak string
	if _, err := os.Stat(target); err == nil {
		if inUse, err := sqlite.InUse(ctx, target); err != nil {
			return fail(c, "store restore", err)
		} else if inUse {
			return refuse("%s is in use: a process opened it during the restore; stop it first", target)
		}
		if fi, err := os.Stat(target + "-wal"); err == nil && fi.Size() > 0 {
			return fail(c, "store restore", fmt.Errorf("%s-wal is left beside the store (a process still writing?): not replacing it", target))
		}
		bak = unusedName(target + "." + stamp)
		if err := os.Link(target, bak); err != nil {
			return fail(c, "store restore", fmt.Errorf("keep the old store: %w", err))
		}
		os.Remove(target + "-shm") // an index of the old file's log, which is empty
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fail(c, "store restore", err)
	}
	var setAside []string
	if *sf.db == "" {
		for _, name := range spools {
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
				aside := unusedName(p + "." + stamp)
				if err := os.Rename(p, aside); err != nil {
					return fail(c, "store restore", err)
				}
				setAside = append(setAside, aside)
			}
		}
	}
	if err := os.Rename(staged, target); err != nil {
		return fail(c, "store restore", err)
	}
	keep = true
	if err := syncDir(dir); err != nil {
		return fail(c, "store restore", err)
	}
	fmt.Fprintf(c.stdout, "restored %s to %s: schema %d, %d chains intact, %d events verified\n", *from, target, v.schema.Store, v.chains, v.events)
	if bak != "" {
		fmt.Fprintf(c.stdout, "the store replaced is kept as %s\n", bak)
	}
	for _, p := range setAside {
		fmt.Fprintf(c.stdout, "audit events spooled for the replaced store are set aside as %s\n", p)
	}
	if epochCleared {
		fmt.Fprintln(c.stdout, "the state epoch was cleared: approvals and grants issued before the next start are refused (state_reset)")
	}
	fmt.Fprintln(c.stdout, "next: start m1-authz, then run 'm1 store status' and 'm1 audit verify'")
	return exitOK
}

// clearStateEpoch deletes the state epoch of the SQLite file at path, if
// it keeps one (the state_epoch table), so that the first m1-authz to
// open it sets a new one: the uses of approvals and grants recorded after
// the backup are not in it, and only a new epoch keeps them from being
// replayed.
func clearStateEpoch(ctx context.Context, path string) (bool, error) {
	db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
	if err != nil {
		return false, err
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'state_epoch'`).Scan(&n); err != nil {
		return false, fmt.Errorf("clear the state epoch: %w", err)
	}
	if n == 0 {
		return false, nil
	}
	if _, err := db.ExecContext(ctx, `DELETE FROM state_epoch`); err != nil {
		return false, fmt.Errorf("clear the state epoch: %w", err)
	}
	return true, nil
}

// hashFile returns the SHA-256 of the file at path.
func hashFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// copyFile copies src over dst (which exists) and syncs it; it returns the
// SHA-256 of what it copied.
func copyFile(src, dst string) ([]byte, error) {
	in, err := os.Open(src)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), in); err != nil {
		out.Close()
		return nil, err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return nil, err
	}
	return h.Sum(nil), out.Close()
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// unusedName is prefix+".bak", or prefix+"-2.bak", "-3.bak"… when that
// exists (two restores within a second).
func unusedName(prefix string) string {
	name := prefix + ".bak"
	for i := 2; ; i++ {
		if _, err := os.Lstat(name); errors.Is(err, fs.ErrNotExist) {
			return name
		}
		name = fmt.Sprintf("%s-%d.bak", prefix, i)
	}
}

// removeDB removes an SQLite file with its journal, log and index.
func removeDB(path string) {
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}
