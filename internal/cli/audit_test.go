package cli

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
)

// auditDB is one empty test database: its --db URL, and a way to run SQL
// behind the store's back, as someone with write access to it would.
type auditDB struct {
	dsn  string
	exec func(t *testing.T, query string)
}

func newSQLiteDB(t *testing.T) auditDB {
	path := filepath.Join(t.TempDir(), "m1.db")
	return auditDB{dsn: "sqlite://" + path, exec: func(t *testing.T, query string) {
		t.Helper()
		db, err := sql.Open("sqlite", path+"?_busy_timeout=10000")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(query); err != nil {
			t.Fatalf("exec %q: %v", query, err)
		}
	}}
}

// postgresDBs starts a PostgreSQL server for t and returns a constructor
// of empty databases on it.
func postgresDBs(t *testing.T) func(t *testing.T) auditDB {
	pg := testenv.StartPostgres(t)
	return func(t *testing.T) auditDB {
		dsn := pg.NewDatabase(t)
		return auditDB{dsn: dsn, exec: func(t *testing.T, query string) {
			t.Helper()
			ctx := context.Background()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			if _, err := c.Exec(ctx, query); err != nil {
				t.Fatalf("exec %q: %v", query, err)
			}
		}}
	}
}

// open opens the test database's store; it is closed with the test.
func (d auditDB) open(t *testing.T) store.Store {
	t.Helper()
	st, err := backend.Open(context.Background(), d.dsn, "")
	if err != nil {
		t.Fatalf("backend.Open = %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// add chains events as writer's and stores them; it returns them as
// stored, with their IDs.
func (d auditDB) add(t *testing.T, writer string, events []store.Event) []store.Event {
	t.Helper()
	st := d.open(t)
	store.NewChainer(writer).Chain(events)
	if err := st.AppendEvents(context.Background(), events); err != nil {
		t.Fatalf("AppendEvents = %v", err)
	}
	var out []store.Event
	if err := st.Chain(context.Background(), writer, func(e store.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// all returns every stored event in (time, id) order.
func (d auditDB) all(t *testing.T) []store.Event {
	t.Helper()
	var out []store.Event
	if err := d.open(t).Events(context.Background(), store.Filter{}, func(e store.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// m1Audit runs "m1 audit args…" with an empty environment.
func m1Audit(t *testing.T, args ...string) runResult {
	t.Helper()
	return m1Env(t, map[string]string{}, append([]string{"audit"}, args...)...)
}

// auditEvents returns n unchained decision events at times[i], varied
// enough to exercise every column and CSV quoting.
func auditEvents(prefix string, times []time.Time) []store.Event {
	out := make([]store.Event, len(times))
	for i, at := range times {
		e := store.Event{
			DecisionID:     fmt.Sprintf("%s-%d", prefix, i),
			Time:           at,
			Kind:           store.KindDecision,
			Principal:      []string{"spiffe://m1.test/agent-a", "spiffe://m1.test/agent-b"}[i%2],
			RunID:          []string{"run-1", "run-2", ""}[i%3],
			Tool:           "read_file",
			ArgsSHA256:     fmt.Sprintf("%064x", i+1),
			Decision:       "allow",
			Reason:         "ok",
			Status:         200,
			PolicyRevision: "rev-7",
			LatencyMicros:  int64(90 + i),
			CacheTier:      []string{"", "l1", "l2"}[i%3],
		}
		if i%2 == 1 {
			e.Decision, e.Reason, e.Status = "deny", "policy_denied", 403
			e.Detail = `path "/etc/passwd", outside
the workspace; <denied> & logged`
		}
		if i%4 == 0 {
			e.Args = json.RawMessage(fmt.Sprintf(`{"path":"/work/a,b\"c\n%d.txt","n":%d}`, i, i))
			e.ProposalID, e.TokenJTI = fmt.Sprintf("prop-%d", i), fmt.Sprintf("jti-%d", i)
		}
		if i%4 == 2 { // arguments left out for their size
			e.ArgsTruncated = true
		}
		out[i] = e
	}
	return out
}

// spaced returns n times step apart, the last one at last.
func spaced(last time.Time, step time.Duration, n int) []time.Time {
	out := make([]time.Time, n)
	for i := range out {
		out[i] = last.Add(-time.Duration(n-1-i) * step)
	}
	return out
}

// sqlTime is how raw SQL writes times; both backends read it.
const sqlTime = "2006-01-02T15:04:05.000000Z"

func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func TestAudit(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testAudit(t, newSQLiteDB) })
	t.Run("postgres", func(t *testing.T) { testAudit(t, postgresDBs(t)) })
}

func testAudit(t *testing.T, newDB func(*testing.T) auditDB) {
	t.Run("verify", func(t *testing.T) { testAuditVerify(t, newDB) })
	t.Run("export", func(t *testing.T) { testAuditExport(t, newDB) })
	t.Run("prune", func(t *testing.T) { testAuditPrune(t, newDB) })
	t.Run("checkpoint", func(t *testing.T) { testAuditCheckpoint(t, newDB) })
	t.Run("store from the environment", func(t *testing.T) {
		d := newDB(t)
		d.add(t, "w-env", auditEvents("env", spaced(time.Now(), time.Minute, 3)))
		r := m1Env(t, map[string]string{"M1_DATABASE_URL": d.dsn}, "audit", "verify")
		if r.code != 0 || !strings.Contains(r.stdout, "ok      w-env  3 events") {
			t.Fatalf("audit verify with $M1_DATABASE_URL:\n%v", r)
		}
	})
}

func testAuditVerify(t *testing.T, newDB func(*testing.T) auditDB) {
	const w1, w2 = "m1-authz/host-1/7/20260301T120000.000000000Z", "m1-authz/host-2/9/20260301T120000.000000000Z"
	base := time.Now().Add(-time.Hour)
	// renumber shifts w1's seq >= from by delta, in two steps so that the
	// unique (writer, seq) index never sees a duplicate.
	renumber := func(t *testing.T, d auditDB, from, delta int64) {
		d.exec(t, fmt.Sprintf(`UPDATE audit_events SET seq = seq + 1000000 WHERE writer = %s AND seq >= %d`, lit(w1), from))
		d.exec(t, fmt.Sprintf(`UPDATE audit_events SET seq = seq - 1000000 + %d WHERE writer = %s AND seq >= 1000000`, delta, lit(w1)))
	}
	forgedID := func(t *testing.T, d auditDB) int64 {
		for _, e := range d.all(t) {
			if e.DecisionID == "forged" {
				return e.ID
			}
		}
		t.Fatal("the forged event is not in the store")
		return 0
	}
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, d auditDB, ev []store.Event) // ev: w1's 6 events as stored
		// want is what the output must say about w1, from the stored
		// events; "" means intact.
		want func(t *testing.T, d auditDB, ev []store.Event) string
	}{
		{name: "intact"},
		{
			name: "reason edited",
			tamper: func(t *testing.T, d auditDB, ev []store.Event) {
				d.exec(t, `UPDATE audit_events SET reason = 'ok' WHERE writer = `+lit(w1)+` AND seq = 4`)
			},
			want: func(t *testing.T, d auditDB, ev []store.Event) string {
				return fmt.Sprintf("BROKEN  %s  seq 4 (id %d) edited: ", w1, ev[3].ID)
			},
		},
		{
			name: "one deleted",
			tamper: func(t *testing.T, d auditDB, ev []store.Event) {
				d.exec(t, `DELETE FROM audit_events WHERE writer = `+lit(w1)+` AND seq = 3`)
			},
			want: func(t *testing.T, d auditDB, ev []store.Event) string {
				return fmt.Sprintf("BROKEN  %s  seq 3 deleted (the next event found is id %d): ", w1, ev[3].ID)
			},
		},
		{
			name: "one inserted",
			tamper: func(t *testing.T, d auditDB, ev []store.Event) {
				renumber(t, d, 3, 1)
				f := store.Event{Writer: w1, Seq: 3, PrevHash: ev[1].Hash, DecisionID: "forged",
					Time: ev[1].Time.Add(time.Second), Kind: store.KindDecision, Principal: "spiffe://m1.test/agent-a",
					Tool: "write_file", Decision: "allow", Reason: "ok", Status: 200}
				f.Hash = store.HashEvent(f) // a valid hash: only the next event's link betrays it
				d.exec(t, fmt.Sprintf(`INSERT INTO audit_events (writer, seq, prev_hash, hash, decision_id, time, kind, principal, tool, decision, reason, status)
					VALUES (%s, 3, %s, %s, 'forged', %s, 'decision', %s, 'write_file', 'allow', 'ok', 200)`,
					lit(w1), lit(f.PrevHash), lit(f.Hash), lit(f.Time.Format(sqlTime)), lit(f.Principal)))
			},
			want: func(t *testing.T, d auditDB, ev []store.Event) string {
				return fmt.Sprintf("BROKEN  %s  seq 3 (id %d) inserted: ", w1, forgedID(t, d))
			},
		},
		{
			name: "every event deleted",
			tamper: func(t *testing.T, d auditDB, ev []store.Event) {
				d.exec(t, `DELETE FROM audit_events WHERE writer = `+lit(w1))
			},
			want: func(t *testing.T, d auditDB, ev []store.Event) string {
				return fmt.Sprintf("BROKEN  %s  seq 1 deleted: the chain is registered but holds no event", w1)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDB(t)
			ev := d.add(t, w1, auditEvents("w1", spaced(base, time.Second, 6)))
			d.add(t, w2, auditEvents("w2", spaced(base, time.Second, 4)))
			if tc.tamper != nil {
				tc.tamper(t, d, ev)
			}
			r := m1Audit(t, "verify", "--db", d.dsn)
			if !strings.Contains(r.stdout, "ok      "+w2+"  4 events\n") {
				t.Fatalf("verify does not report the intact chain %s:\n%v", w2, r)
			}
			if tc.want == nil {
				if r.code != 0 || !strings.Contains(r.stdout, "ok      "+w1+"  6 events\n") ||
					!strings.HasSuffix(r.stdout, "2 chains: 2 intact, 0 broken; 10 events verified\n") {
					t.Fatalf("verify(intact) =\n%v\nwant exit 0, both chains ok", r)
				}
			} else {
				if want := tc.want(t, d, ev); r.code != 1 || !strings.Contains(r.stdout, want) {
					t.Fatalf("verify(%s) =\n%v\nwant exit 1 and %q", tc.name, r, want)
				}
				if !strings.Contains(r.stdout, "2 chains: 1 intact, 1 broken") {
					t.Fatalf("verify(%s) summary wrong:\n%v", tc.name, r)
				}
			}

			// --writer: only that chain.
			if r := m1Audit(t, "verify", "--db", d.dsn, "--writer", w2); r.code != 0 || strings.Contains(r.stdout, w1) {
				t.Fatalf("verify --writer %s =\n%v\nwant exit 0, nothing of %s", w2, r, w1)
			}

			// --json: one object.
			r = m1Audit(t, "verify", "--db", d.dsn, "--json")
			var got struct {
				OK     bool          `json:"ok"`
				Chains []chainReport `json:"chains"`
				Intact int           `json:"intact"`
				Broken int           `json:"broken"`
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatalf("verify --json: %v\n%v", err, r)
			}
			if len(got.Chains) != 2 || got.Chains[0].Writer != w1 || got.Chains[1].Writer != w2 || !got.Chains[1].OK {
				t.Fatalf("verify --json chains = %+v", got.Chains)
			}
			if tc.want == nil {
				if r.code != 0 || !got.OK || got.Intact != 2 || got.Chains[0].Events != 6 ||
					got.Chains[0].LastSeq != 6 || got.Chains[0].LastHash != ev[5].Hash {
					t.Fatalf("verify --json (intact) = %+v, exit %d", got, r.code)
				}
				return
			}
			b := got.Chains[0].Break
			if r.code != 1 || got.OK || got.Broken != 1 || b == nil || !strings.Contains(tc.want(t, d, ev), fmt.Sprintf("seq %d", b.Seq)) {
				t.Fatalf("verify --json (%s) = %+v (break %+v), exit %d", tc.name, got, b, r.code)
			}
		})
	}

	t.Run("unknown writer", func(t *testing.T) {
		d := newDB(t)
		d.add(t, w1, auditEvents("w1", spaced(base, time.Second, 2)))
		if r := m1Audit(t, "verify", "--db", d.dsn, "--writer", "nope"); r.code != 2 || !strings.Contains(r.stderr, `no chain "nope"`) {
			t.Fatalf("verify --writer nope =\n%v\nwant exit 2", r)
		}
	})
	t.Run("empty store", func(t *testing.T) {
		d := newDB(t)
		d.open(t)
		if r := m1Audit(t, "verify", "--db", d.dsn); r.code != 0 || r.stdout != "0 chains: 0 intact, 0 broken; 0 events verified\n" {
			t.Fatalf("verify (empty) =\n%v", r)
		}
	})
}

func testAuditExport(t *testing.T, newDB func(*testing.T) auditDB) {
	d := newDB(t)
	now := time.Now()
	// Two writers interleaved, 5h apart each, over the last ~3 days; no
	// event within 30 minutes of a whole day back from now.
	d.add(t, "w-a", auditEvents("a", spaced(now.Add(-time.Hour), 5*time.Hour, 15)))
	d.add(t, "w-b", auditEvents("b", spaced(now.Add(-3*time.Hour-30*time.Minute), 5*time.Hour, 14)))
	all := d.all(t)
	if len(all) != 29 {
		t.Fatalf("%d events stored, want 29", len(all))
	}
	ids := func(ev []store.Event) []int64 {
		out := []int64{}
		for _, e := range ev {
			out = append(out, e.ID)
		}
		return out
	}
	where := func(keep func(e store.Event) bool) []store.Event {
		var out []store.Event
		for _, e := range all {
			if keep(e) {
				out = append(out, e)
			}
		}
		return out
	}
	day := 24 * time.Hour
	window0, window1 := now.Add(-50*time.Hour).Truncate(time.Second), now.Add(-20*time.Hour).Truncate(time.Second)
	for _, tc := range []struct {
		name string
		args []string
		want []store.Event
	}{
		{"everything", []string{"--since", "30d"}, all},
		{"run", []string{"--since", "30d", "--run", "run-1"}, where(func(e store.Event) bool { return e.RunID == "run-1" })},
		{"agent", []string{"--since", "1y", "--agent", "spiffe://m1.test/agent-b"},
			where(func(e store.Event) bool { return e.Principal == "spiffe://m1.test/agent-b" })},
		{"run and agent", []string{"--since", "1y", "--agent", "spiffe://m1.test/agent-a", "--run", "run-2"},
			where(func(e store.Event) bool { return e.Principal == "spiffe://m1.test/agent-a" && e.RunID == "run-2" })},
		{"last day", []string{"--since", "24h"}, where(func(e store.Event) bool { return e.Time.After(now.Add(-day)) })},
		{"days ago", []string{"--since", "2d", "--until", "1d"},
			where(func(e store.Event) bool { return e.Time.After(now.Add(-2*day)) && e.Time.Before(now.Add(-day)) })},
		{"rfc 3339 window", []string{"--since", window0.UTC().Format(time.RFC3339), "--until", window1.Format(time.RFC3339Nano)},
			where(func(e store.Event) bool { return !e.Time.Before(window0) && e.Time.Before(window1) })},
		{"until now", []string{"--since", "1w", "--until", "now"}, all},
		{"limit", []string{"--since", "30d", "--limit", "3"}, all[:3]},
		{"nothing", []string{"--since", "2y", "--until", "1y"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.want) == 0 && tc.name != "nothing" {
				t.Fatalf("test case selects nothing")
			}
			for _, format := range []string{"jsonl", "csv"} {
				r := m1Audit(t, append([]string{"export", "--db", d.dsn, "--format", format}, tc.args...)...)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("export %s %v =\n%v", format, tc.args, r)
				}
				got := parseExport(t, format, r.stdout)
				if !slices.Equal(ids(got), ids(tc.want)) {
					t.Fatalf("export --format %s %v = ids %v, want %v", format, tc.args, ids(got), ids(tc.want))
				}
				for i, e := range got {
					if !reflect.DeepEqual(utc(e), utc(tc.want[i])) {
						t.Fatalf("export --format %s: event %d =\n%+v\nwant\n%+v", format, e.ID, e, tc.want[i])
					}
					if store.HashEvent(e) != e.Hash {
						t.Fatalf("export --format %s: event %d does not re-hash from the export", format, e.ID)
					}
				}
			}
		})
	}

	t.Run("default format is jsonl, fields", func(t *testing.T) {
		r := m1Audit(t, "export", "--db", d.dsn, "--since", "30d", "--limit", "1")
		var m map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || r.code != 0 {
			t.Fatalf("export = %v\n%v", err, r)
		}
		for _, k := range []string{"id", "decision_id", "time", "kind", "principal", "tool", "args_sha256", "args", "decision",
			"reason", "status", "policy_revision", "latency_us", "writer", "seq", "prev_hash", "hash"} {
			if _, ok := m[k]; !ok {
				t.Errorf("export jsonl has no %q: %s", k, r.stdout)
			}
		}
		if strings.Contains(r.stdout, `\u003c`) {
			t.Errorf("export jsonl escapes HTML: %s", r.stdout)
		}
	})
	t.Run("csv header and times", func(t *testing.T) {
		r := m1Audit(t, "export", "--db", d.dsn, "--since", "30d", "--limit", "1", "--format", "csv")
		recs, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
		if err != nil || len(recs) != 2 {
			t.Fatalf("export csv: %v\n%v", err, r)
		}
		if want := "id,decision_id,time,kind,principal,run_id,proposal_id,tool,args_sha256,args,decision,reason,detail,status," +
			"policy_revision,token_jti,latency_us,cache_tier,writer,seq,prev_hash,hash,args_truncated"; strings.Join(recs[0], ",") != want {
			t.Fatalf("csv header = %v\nwant %s", recs[0], want)
		}
		if want := all[0].Time.UTC().Format("2006-01-02T15:04:05.000000Z"); recs[1][2] != want {
			t.Fatalf("csv time = %q, want %q (RFC 3339, UTC, microseconds)", recs[1][2], want)
		}
	})
}

// utc returns e with its time in UTC, for comparison.
func utc(e store.Event) store.Event {
	e.Time = e.Time.UTC()
	return e
}

// parseExport reads an export back into events.
func parseExport(t *testing.T, format, out string) []store.Event {
	t.Helper()
	var got []store.Event
	if format == "jsonl" {
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var e store.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("export jsonl line %q: %v", sc.Text(), err)
			}
			got = append(got, e)
		}
		return got
	}
	recs, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatalf("export csv: %v\n%s", err, out)
	}
	if len(recs) == 0 || !slices.Equal(recs[0], csvHeader) {
		t.Fatalf("export csv has no header: %q", out)
	}
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("export csv: %v", err)
		}
		return n
	}
	for _, r := range recs[1:] {
		at, err := time.Parse(time.RFC3339, r[2])
		if err != nil {
			t.Fatalf("export csv time: %v", err)
		}
		e := store.Event{
			ID: num(r[0]), DecisionID: r[1], Time: at, Kind: r[3], Principal: r[4], RunID: r[5], ProposalID: r[6],
			Tool: r[7], ArgsSHA256: r[8], Decision: r[10], Reason: r[11], Detail: r[12], Status: int(num(r[13])),
			PolicyRevision: r[14], TokenJTI: r[15], LatencyMicros: num(r[16]), CacheTier: r[17],
			Writer: r[18], Seq: num(r[19]), PrevHash: r[20], Hash: r[21], ArgsTruncated: r[22] == "true",
		}
		if r[9] != "" {
			e.Args = json.RawMessage(r[9])
		}
		got = append(got, e)
	}
	return got
}

func testAuditPrune(t *testing.T, newDB func(*testing.T) auditDB) {
	d := newDB(t)
	now := time.Now()
	const w = "m1-authz/host-1/7/20230301T120000.000000000Z"
	times := slices.Concat(
		spaced(now.Add(-3*365*24*time.Hour), time.Hour, 4), // past the 2-year retention
		spaced(now.Add(-365*24*time.Hour), time.Hour, 3),
		spaced(now.Add(-time.Hour), time.Minute, 2),
	)
	d.add(t, w, auditEvents("p", times))
	at := func(ago time.Duration) string { return lit(now.Add(-ago).UTC().Format(sqlTime)) }
	old, recent := at(3*365*24*time.Hour), at(time.Hour)
	for _, q := range []string{
		`INSERT INTO agent_runs (id, agent, status, created_at, updated_at) VALUES ('r-old', 'agent-a', 'completed', ` + old + `, ` + old + `)`,
		`INSERT INTO agent_runs (id, agent, status, created_at, updated_at) VALUES ('r-new', 'agent-a', 'running', ` + recent + `, ` + recent + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, created_at, updated_at) VALUES ('tc-1', 'r-old', 'agent-a', 'read_file', ` + old + `, ` + old + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, created_at, updated_at) VALUES ('tc-2', 'r-new', 'agent-a', 'read_file', ` + old + `, ` + old + `)`,
		`INSERT INTO tool_calls (id, run_id, agent, tool, created_at, updated_at) VALUES ('tc-3', 'r-new', 'agent-a', 'read_file', ` + recent + `, ` + recent + `)`,
		`INSERT INTO proposals (id, agent, tool, created_at, updated_at) VALUES ('p-1', 'agent-a', 'write_file', ` + old + `, ` + old + `)`,
		`INSERT INTO proposals (id, run_id, agent, tool, created_at, updated_at) VALUES ('p-2', 'r-new', 'agent-a', 'write_file', ` + recent + `, ` + recent + `)`,
		`INSERT INTO revoked_tokens (jti, expires_at, created_at) VALUES ('jti-expired-40d', ` + at(40*24*time.Hour) + `, ` + old + `)`,
		`INSERT INTO revoked_tokens (jti, expires_at, created_at) VALUES ('jti-expired-10d', ` + at(10*24*time.Hour) + `, ` + old + `)`,
		`INSERT INTO revoked_tokens (sub, created_at) VALUES ('agent-x', ` + old + `)`,
	} {
		d.exec(t, q)
	}

	for _, step := range []struct {
		args []string
		want map[string]int64 // target → rows deleted; exactly these lines
		age  time.Duration    // of every line's BEFORE, 0: the defaults
	}{
		{nil, map[string]int64{"events": 4, "tool_calls": 2, "proposals": 1, "runs": 1, "revoked_tokens": 1}, 0},
		{nil, map[string]int64{"events": 0, "tool_calls": 0, "proposals": 0, "runs": 0, "revoked_tokens": 0}, 0},
		{[]string{"--older-than", "180d", "--kind", "events"}, map[string]int64{"events": 3}, 180 * 24 * time.Hour},
		{[]string{"--older-than", "5d", "--kind", "runs,revoked_tokens"}, map[string]int64{"runs": 0, "revoked_tokens": 1}, 5 * 24 * time.Hour},
		{[]string{"--older-than", "30m", "--kind", "events", "--kind", "tool_calls"}, map[string]int64{"events": 2, "tool_calls": 1}, 30 * time.Minute},
	} {
		r := m1Audit(t, append([]string{"prune", "--db", d.dsn}, step.args...)...)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != len(step.want)+1 || strings.Join(strings.Fields(lines[0]), " ") != "TARGET DELETED BEFORE" {
			t.Fatalf("prune %v =\n%v", step.args, r)
		}
		for _, l := range lines[1:] {
			f := strings.Fields(l)
			want, ok := step.want[f[0]]
			if n, _ := strconv.ParseInt(f[1], 10, 64); !ok || n != want {
				t.Fatalf("prune %v: %q, want %s %d\n%v", step.args, l, f[0], want, r)
			}
			before, err := time.Parse(time.RFC3339, f[2])
			age := step.age
			if age == 0 {
				age = 2 * 365 * 24 * time.Hour
				if f[0] == "revoked_tokens" {
					age = 30 * 24 * time.Hour
				}
			}
			if err != nil || before.Sub(now.Add(-age)).Abs() > time.Minute {
				t.Fatalf("prune %v: %q: BEFORE is not %v ago", step.args, l, age)
			}
		}
		// Pruning keeps the chain verifiable from its checkpoint.
		if r := m1Audit(t, "verify", "--db", d.dsn); r.code != 0 || !strings.Contains(r.stdout, "pruned through seq") {
			t.Fatalf("verify after prune %v =\n%v", step.args, r)
		}
	}
	if r := m1Audit(t, "verify", "--db", d.dsn); !strings.Contains(r.stdout, "ok      "+w+"  0 events (pruned through seq 9)") {
		t.Fatalf("verify after pruning everything =\n%v", r)
	}
}

func TestAuditFlags(t *testing.T) {
	d := newSQLiteDB(t)
	d.add(t, "w", auditEvents("f", spaced(time.Now(), time.Second, 2)))
	for _, tc := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, 2, "", "m1 audit verify"},
		{"unknown command", []string{"frob"}, 2, "", `unknown command "frob"`},
		{"help", []string{"-h"}, 0, "m1 audit export", ""},
		{"verify help", []string{"verify", "-h"}, 0, "$M1_DATABASE_URL", ""},
		{"export help", []string{"export", "--help"}, 0, "$M1_DATA_DIR", ""},
		{"prune help", []string{"prune", "-h"}, 0, "revoked_tokens  30 days", ""},
		{"verify argument", []string{"verify", "--db", d.dsn, "extra"}, 2, "", "unexpected arguments"},
		{"verify unknown flag", []string{"verify", "--since", "1d"}, 2, "", "flag provided but not defined"},
		{"export without since", []string{"export", "--db", d.dsn}, 2, "", "--since is required"},
		{"export bad since", []string{"export", "--db", d.dsn, "--since", "yesterday"}, 2, "", `--since "yesterday"`},
		{"export bad until", []string{"export", "--db", d.dsn, "--since", "1d", "--until", "2026-13-01"}, 2, "", `--until "2026-13-01"`},
		{"export negative age", []string{"export", "--db", d.dsn, "--since", "-1h"}, 2, "", "negative"},
		{"export since after until", []string{"export", "--db", d.dsn, "--since", "1h", "--until", "2h"}, 2, "", "must be before --until"},
		{"export bad format", []string{"export", "--db", d.dsn, "--since", "1d", "--format", "xml"}, 2, "", `--format "xml"`},
		{"export negative limit", []string{"export", "--db", d.dsn, "--since", "1d", "--limit", "-1"}, 2, "", "--limit"},
		{"prune zero", []string{"prune", "--db", d.dsn, "--older-than", "0s"}, 2, "", "must be positive"},
		{"prune negative", []string{"prune", "--db", d.dsn, "--older-than", "-5d"}, 2, "", "--older-than"},
		{"prune bad unit", []string{"prune", "--db", d.dsn, "--older-than", "5x"}, 2, "", "--older-than"},
		{"prune overflow", []string{"prune", "--db", d.dsn, "--older-than", "999999y"}, 2, "", "too long"},
		{"prune bad kind", []string{"prune", "--db", d.dsn, "--kind", "events,decisions"}, 2, "", `--kind "decisions"`},
		{"unsupported url", []string{"verify", "--db", "mysql://db/m1"}, 2, "", `scheme "mysql"`},
		{"no sqlite file", []string{"export", "--since", "1d", "--data-dir", t.TempDir()}, 2, "", "no audit store at"},
		{"postgres unreachable", []string{"verify", "--db", fmt.Sprintf("postgres://m1:secret@127.0.0.1:%d/m1?connect_timeout=5", testenv.FreePort(t))}, 2, "", "open the audit store"},
		{"data dir", []string{"verify", "--data-dir", filepath.Dir(strings.TrimPrefix(d.dsn, "sqlite://"))}, 0, "ok      w  2 events", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := m1Audit(t, tc.args...)
			if r.code != tc.wantCode || !strings.Contains(r.stdout, tc.wantStdout) || !strings.Contains(r.stderr, tc.wantStderr) {
				t.Fatalf("m1 audit %q =\n%v\nwant exit %d, stdout with %q, stderr with %q", tc.args, r, tc.wantCode, tc.wantStdout, tc.wantStderr)
			}
			if strings.Contains(r.stderr, "secret") {
				t.Fatalf("m1 audit %q echoes the password:\n%v", tc.args, r)
			}
		})
	}
	t.Run("default data dir from the environment", func(t *testing.T) {
		dir := filepath.Dir(strings.TrimPrefix(d.dsn, "sqlite://"))
		r := m1Env(t, map[string]string{"M1_DATA_DIR": dir}, "audit", "export", "--since", "1d", "--format", "csv")
		if r.code != 0 || strings.Count(r.stdout, ",f-") != 2 {
			t.Fatalf("export with $M1_DATA_DIR =\n%v", r)
		}
	})
}

func TestParseAge(t *testing.T) {
	const day = 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"720h", 720 * time.Hour, true},
		{"90m", 90 * time.Minute, true},
		{"0s", 0, true},
		{"30d", 30 * day, true},
		{"2w", 14 * day, true},
		{"2y", 730 * day, true},
		{"007d", 7 * day, true},
		{"1.5d", 0, false},
		{"+3d", 0, false},
		{"-3d", 0, false},
		{"-3h", 0, false},
		{"d", 0, false},
		{"3", 0, false},
		{"3x", 0, false},
		{"", 0, false},
		{"300y", 0, false},
	} {
		got, err := parseAge(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseAge(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// The CSV columns are the fields of docs/AUDIT.md's event table in its
// order, except args_truncated, which comes last; the doc says so where it
// describes the CSV export.
func TestAuditCSVColumnsMatchDoc(t *testing.T) {
	raw, err := os.ReadFile("../../docs/AUDIT.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	_, event, _ := strings.Cut(doc, "\n## The event\n")
	event, _, _ = strings.Cut(event, "\n## ")
	var fields []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_0-9]+)` \\|").FindAllStringSubmatch(event, -1) {
		fields = append(fields, m[1])
	}
	want := slices.DeleteFunc(slices.Clone(fields), func(f string) bool { return f == "args_truncated" })
	want = append(want, "args_truncated")
	if len(fields) != len(csvHeader) || !slices.Equal(csvHeader, want) {
		t.Errorf("csvHeader = %v\nwant the event table's fields with args_truncated last: %v", csvHeader, want)
	}
	_, bullet, _ := strings.Cut(doc, "\n- `--format csv`:")
	bullet, _, _ = strings.Cut(bullet, "\n- ")
	if !regexp.MustCompile("(?s)`args_truncated`.*\\blast\\b").MatchString(bullet) {
		t.Errorf("docs/AUDIT.md's --format csv does not say that args_truncated comes last:\n%s", bullet)
	}
}
