package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
)

// checkpointKeys writes a checkpoint key pair as m1 keys gen does: the
// private JWK and the public JWKS.
func checkpointKeys(t *testing.T) (private, public string) {
	t.Helper()
	k, err := approval.GenerateKey(approval.AlgEdDSA, "checkpoint-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, _ := k.MarshalPrivateJWK()
	pub, _ := k.PublicJWKS()
	private, public = filepath.Join(dir, "checkpoint-1.jwk"), filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(private, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(public, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return private, public
}

func testAuditCheckpoint(t *testing.T, newDB func(*testing.T) auditDB) {
	const w1, w2 = "m1-authz/host-1/7/20260301T120000.000000000Z", "m1-authz/host-2/9/20260301T120000.000000000Z"
	base := time.Now().Add(-time.Hour)
	priv, pub := checkpointKeys(t)
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, d auditDB, cps string)
		want   []string // lines verify must print; none: all intact
	}{
		{name: "intact, and events added since"},
		{
			name: "the newest 10 events deleted",
			tamper: func(t *testing.T, d auditDB, _ string) {
				d.exec(t, `DELETE FROM audit_events WHERE writer = `+lit(w1)+` AND seq > 20`)
			},
			want: []string{"BROKEN  " + w1 + "  cut short: seq 21 to 30 missing: the chain ends at seq 20, but checkpoint "},
		},
		{
			name: "the head rewritten with a fresh hash",
			tamper: func(t *testing.T, d auditDB, _ string) {
				// The chain alone cannot tell: the head has a valid hash.
				found := false
				for _, e := range d.all(t) {
					if e.Writer == w1 && e.Seq == 30 {
						found = true
						e.Detail = "nothing to see here"
						h := store.HashEvent(e)
						d.exec(t, fmt.Sprintf(`UPDATE audit_events SET detail = 'nothing to see here', hash = %s WHERE writer = %s AND seq = 30`, lit(h), lit(w1)))
					}
				}
				if !found {
					t.Fatal("no seq 30")
				}
				if r := m1Audit(t, "verify", "--db", d.dsn); r.code != 0 {
					t.Fatalf("verify without checkpoints after rewriting the head = %v, want intact (the chain alone cannot tell)", r)
				}
			},
			want: []string{"BROKEN  " + w1 + "  rewritten: seq 30's hash "},
		},
		{
			name: "a whole chain deleted",
			tamper: func(t *testing.T, d auditDB, _ string) {
				d.exec(t, `DELETE FROM audit_events WHERE writer = `+lit(w1))
				d.exec(t, `DELETE FROM audit_chains WHERE writer = `+lit(w1))
			},
			want: []string{"BROKEN  " + w1 + "  chain missing: seq 1 to 30 deleted: the store has no such chain"},
		},
		{
			name: "a forged checkpoint file",
			tamper: func(t *testing.T, d auditDB, cps string) {
				if err := os.WriteFile(filepath.Join(cps, "29990101T000000.000000Z-000000000000.jws"), []byte("e30.e30.AAAA"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"BROKEN  checkpoint 29990101T000000.000000Z-000000000000.jws: "},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDB(t)
			d.add(t, w1, auditEvents("w1", spaced(base, time.Second, 30)))
			d.add(t, w2, auditEvents("w2", spaced(base, time.Second, 4)))
			cps := filepath.Join(t.TempDir(), "checkpoints")
			r := m1Audit(t, "checkpoint", "--db", d.dsn, "--out", cps, "--key", priv)
			if r.code != 0 || !strings.Contains(r.stdout, w1+"  seq 30  ") || !strings.Contains(r.stdout, "2 chains checkpointed: ") {
				t.Fatalf("audit checkpoint =\n%v", r)
			}
			// A second checkpoint of one chain, later: never over the first.
			if r := m1Env(t, map[string]string{"M1_AUDIT_CHECKPOINT_OUT": cps, "M1_AUDIT_CHECKPOINT_KEY_FILE": priv},
				"audit", "checkpoint", "--db", d.dsn, "--writer", w2); r.code != 0 {
				t.Fatalf("audit checkpoint (from the environment) =\n%v", r)
			}
			if files, _ := filepath.Glob(filepath.Join(cps, "*.jws")); len(files) != 2 {
				t.Fatalf("checkpoint files = %v, want 2", files)
			}
			if tc.tamper != nil {
				tc.tamper(t, d, cps)
			}
			r = m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--checkpoint-keys", pub)
			if len(tc.want) == 0 {
				if r.code != 0 || !strings.Contains(r.stdout, "ok      "+w1+"  30 events (holds its signed head, seq 30)\n") ||
					!strings.HasSuffix(r.stdout, "; 2 signed checkpoints, 0 bad\n") {
					t.Fatalf("verify --checkpoints (intact) =\n%v", r)
				}
				return
			}
			for _, want := range tc.want {
				if r.code != 1 || !strings.Contains(r.stdout, want) {
					t.Fatalf("verify --checkpoints (%s) =\n%v\nwant exit 1 and %q", tc.name, r, want)
				}
			}
			if !strings.Contains(r.stdout, "ok      "+w2+"  4 events (holds its signed head, seq 4)\n") {
				t.Fatalf("verify --checkpoints (%s) does not report %s intact:\n%v", tc.name, w2, r)
			}
			// As DESIGN §9 writes it, without keys: the same finding, with a
			// warning that the signatures went unverified.
			if r := m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps); r.code != 1 || !strings.Contains(r.stdout, tc.want[0]) ||
				!strings.Contains(r.stderr, "signatures not verified") {
				t.Fatalf("verify --checkpoints without keys (%s) =\n%v\nwant exit 1, %q and a warning", tc.name, r, tc.want[0])
			}
			// The same in JSON.
			r = m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--checkpoint-keys", pub, "--json")
			var got struct {
				OK     bool          `json:"ok"`
				Chains []chainReport `json:"chains"`
				Bad    map[string]string
			}
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 1 || got.OK {
				t.Fatalf("verify --checkpoints --json (%s) = %v\n%v", tc.name, err, r)
			}
			if tc.name == "the newest 10 events deleted" {
				s := got.Chains[0].Signed
				if got.Chains[0].Writer != w1 || s == nil || s.Finding != "cut_short" || s.FirstMissing != 21 || s.LastMissing != 30 {
					t.Fatalf("verify --json chain %s signed = %+v, want cut_short 21 to 30", got.Chains[0].Writer, s)
				}
			}
		})
	}

	t.Run("keys", func(t *testing.T) {
		d := newDB(t)
		d.add(t, w1, auditEvents("w1", spaced(base, time.Second, 2)))
		cps := filepath.Join(t.TempDir(), "checkpoints")
		if r := m1Audit(t, "checkpoint", "--db", d.dsn, "--out", cps, "--key", priv); r.code != 0 {
			t.Fatalf("audit checkpoint =\n%v", r)
		}
		// Without keys: read unverified, and said so.
		if r := m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps); r.code != 0 || !strings.Contains(r.stderr, "signatures not verified") {
			t.Fatalf("verify --checkpoints without keys =\n%v\nwant exit 0 and a warning", r)
		}
		// The signing key m1-authz is given ($M1_AUDIT_CHECKPOINT_KEY_FILE) verifies them.
		if r := m1Env(t, map[string]string{"M1_AUDIT_CHECKPOINT_KEY_FILE": priv}, "audit", "verify", "--db", d.dsn, "--checkpoints", cps); r.code != 0 || r.stderr != "" {
			t.Fatalf("verify --checkpoints with $M1_AUDIT_CHECKPOINT_KEY_FILE =\n%v\nwant exit 0, no warning", r)
		}
		// Another key's checkpoints: bad when verified, taken when not.
		otherPriv, otherPub := checkpointKeys(t)
		if r := m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--checkpoint-keys", otherPub); r.code != 1 || !strings.Contains(r.stdout, "BROKEN  checkpoint ") {
			t.Fatalf("verify --checkpoints with another key =\n%v\nwant exit 1, the checkpoint bad", r)
		}
		if r := m1Env(t, map[string]string{"M1_AUDIT_CHECKPOINT_KEY_FILE": otherPriv}, "audit", "verify", "--db", d.dsn, "--checkpoints", cps); r.code != 1 {
			t.Fatalf("verify --checkpoints with another $M1_AUDIT_CHECKPOINT_KEY_FILE =\n%v\nwant exit 1", r)
		}
		if r := m1Audit(t, "checkpoint", "--db", d.dsn, "--out", t.TempDir(), "--key", pub); r.code != 2 {
			t.Fatalf("checkpoint --key PUBLIC =\n%v\nwant exit 2", r)
		}
	})
}

// Checkpoints read without a key are not called signed: verify says they
// went unverified, in the text and in --json.
func TestAuditVerifyUnverifiedCheckpoints(t *testing.T) {
	const w = "m1-authz/host-1/7/20260301T120000.000000000Z"
	priv, pub := checkpointKeys(t)
	d := newSQLiteDB(t)
	d.add(t, w, auditEvents("w", spaced(time.Now().Add(-time.Hour), time.Second, 3)))
	cps := filepath.Join(t.TempDir(), "checkpoints")
	if r := m1Audit(t, "checkpoint", "--db", d.dsn, "--out", cps, "--key", priv); r.code != 0 {
		t.Fatalf("audit checkpoint =\n%v", r)
	}

	r := m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps)
	if r.code != 0 || !strings.Contains(r.stdout, "ok      "+w+"  3 events (holds its unverified checkpoint head, seq 3)\n") ||
		!strings.HasSuffix(r.stdout, "; 1 unverified checkpoints, 0 bad\n") || strings.Contains(r.stdout, "signed") {
		t.Errorf("verify --checkpoints without keys =\n%v\nwant the head and the checkpoints called unverified, never signed", r)
	}
	var got struct {
		Checkpoints         int           `json:"checkpoints"`
		CheckpointsVerified *bool         `json:"checkpoints_verified"`
		Chains              []chainReport `json:"chains"`
	}
	r = m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("verify --checkpoints --json without keys = %v\n%v", err, r)
	}
	if got.Checkpoints != 1 || got.CheckpointsVerified == nil || *got.CheckpointsVerified ||
		len(got.Chains) != 1 || got.Chains[0].Signed == nil || got.Chains[0].Signed.Verified {
		t.Errorf("verify --checkpoints --json without keys = %s\nwant checkpoints 1, checkpoints_verified false, the chain's signed.verified false", r.stdout)
	}

	// With the key: signed, and verified.
	r = m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--checkpoint-keys", pub)
	if r.code != 0 || !strings.Contains(r.stdout, "(holds its signed head, seq 3)\n") || !strings.HasSuffix(r.stdout, "; 1 signed checkpoints, 0 bad\n") {
		t.Errorf("verify --checkpoints --checkpoint-keys =\n%v", r)
	}
	got.CheckpointsVerified = nil
	r = m1Audit(t, "verify", "--db", d.dsn, "--checkpoints", cps, "--checkpoint-keys", pub, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 {
		t.Fatalf("verify --checkpoints --checkpoint-keys --json = %v\n%v", err, r)
	}
	if got.CheckpointsVerified == nil || !*got.CheckpointsVerified || got.Chains[0].Signed == nil || !got.Chains[0].Signed.Verified {
		t.Errorf("verify --checkpoints --checkpoint-keys --json = %s\nwant checkpoints_verified true, signed.verified true", r.stdout)
	}
}

// export --format calls puts each decision beside its outcome from Envoy's
// access log and the orchestrator's dispatch result.
func TestAuditExportCalls(t *testing.T) {
	d := newSQLiteDB(t)
	at := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	ev := func(off int, e store.Event) store.Event {
		e.Time, e.RunID = at.Add(time.Duration(off)*time.Second), "run-9"
		return e
	}
	d.add(t, "m1-authz/h/1/x", []store.Event{
		ev(0, store.Event{Kind: store.KindDecision, DecisionID: "d-ok", Tool: "read_file", Principal: "agent-1", Decision: "allow", Reason: "ok", Status: 200}),
		ev(1, store.Event{Kind: store.KindResult, DecisionID: "d-ok", Tool: "read_file", Principal: "agent-1", Decision: "succeeded", Reason: "ok", Status: 200, LatencyMicros: 4200,
			Detail: `{"source":"envoy_access_log"}`}),
		ev(2, store.Event{Kind: store.KindDecision, DecisionID: "d-fail", ProposalID: "p-2", Tool: "write_file", Principal: "agent-1", Decision: "allow", Reason: "ok", Status: 200}),
		ev(3, store.Event{Kind: store.KindResult, DecisionID: "d-fail", Tool: "write_file", Decision: "failed", Reason: "tool_error", Status: 500, LatencyMicros: 1000,
			Detail: `{"source":"envoy_access_log","response_flags":[]}`}),
		ev(4, store.Event{Kind: store.KindDecision, DecisionID: "d-deny", Tool: "write_file", Principal: "agent-1", Decision: "deny", Reason: "token_missing", Status: 401}),
		ev(5, store.Event{Kind: store.KindDecision, DecisionID: "d-none", Tool: "read_file", Principal: "agent-1", Decision: "allow", Reason: "ok", Status: 200}),
	})
	d.add(t, "m1-orchestrator/h/2/x", []store.Event{
		ev(6, store.Event{Kind: "proposal", ProposalID: "p-1", Tool: "read_file"}),
		ev(7, store.Event{Kind: store.KindResult, DecisionID: "d-ok", Tool: "read_file", Decision: "succeeded", Reason: "ok", Status: 200, Detail: `{"run_cost_usd":0.1}`}),
		ev(8, store.Event{Kind: store.KindResult, ProposalID: "p-2", Tool: "write_file", Decision: "failed", Reason: "tool_error", Status: 500, Detail: `{"run_cost_usd":0.2}`}),
	})
	r := m1Audit(t, "export", "--db", d.dsn, "--since", "1h", "--run", "run-9", "--format", "calls")
	if r.code != 0 {
		t.Fatalf("export --format calls =\n%v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 5 || strings.Join(strings.Fields(lines[0]), " ") != "TIME DECISION_ID TOOL PRINCIPAL DECISION REASON OUTCOME STATUS TOOL_MS DISPATCH" {
		t.Fatalf("export --format calls = %q, want a header and 4 calls", r.stdout)
	}
	for i, want := range []string{
		"d-ok read_file agent-1 allow ok succeeded 200 4.2 succeeded 200",
		"d-fail write_file agent-1 allow ok failed (tool_error) 500 1.0 failed 500",
		"d-deny write_file agent-1 deny token_missing - - - -",
		"d-none read_file agent-1 allow ok none - - -",
	} {
		if got := strings.Join(strings.Fields(lines[i+1])[1:], " "); got != want {
			t.Errorf("row %d = %q, want %q", i+1, got, want)
		}
	}
}

// A call made under a run's grant: the sidecar's decision names no run or
// proposal (the grant names neither), so the orchestrator's dispatch result
// matches no decision row. It is printed as its own row, never dropped.
func TestAuditExportCallsGranted(t *testing.T) {
	d := newSQLiteDB(t)
	at := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	ev := func(off int, e store.Event) store.Event {
		e.Time = at.Add(time.Duration(off) * time.Second)
		return e
	}
	d.add(t, "m1-authz/h/1/x", []store.Event{
		ev(0, store.Event{Kind: store.KindDecision, DecisionID: "d-g1", Tool: "read_file", Principal: "agent-1", Decision: "allow", Reason: "ok", Status: 200, TokenJTI: "grant-1"}),
		ev(1, store.Event{Kind: store.KindResult, DecisionID: "d-g1", Tool: "read_file", Principal: "agent-1", Decision: "succeeded", Reason: "ok", Status: 200, LatencyMicros: 2500,
			Detail: `{"source":"envoy_access_log"}`}),
	})
	d.add(t, "m1-orchestrator/h/2/x", []store.Event{
		ev(2, store.Event{Kind: store.KindResult, RunID: "run-g", ProposalID: "p-1", Tool: "read_file", Principal: "agent-1", Decision: "succeeded", Reason: "ok", Status: 200,
			Detail: `{"run_cost_usd":0.1}`}),
		ev(3, store.Event{Kind: store.KindResult, RunID: "run-g", ProposalID: "p-2", Tool: "write_file", Principal: "agent-1", Decision: "failed", Reason: "interrupted"}),
	})
	for _, tt := range []struct {
		name string
		args []string
		want []string // rows, without the time
	}{
		{"the run", []string{"--run", "run-g"}, []string{
			"- read_file agent-1 - - - - - succeeded 200",
			"- write_file agent-1 - - - - - failed",
		}},
		{"everything", nil, []string{
			"d-g1 read_file agent-1 allow ok succeeded 200 2.5 -",
			"- read_file agent-1 - - - - - succeeded 200",
			"- write_file agent-1 - - - - - failed",
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1Audit(t, append([]string{"export", "--db", d.dsn, "--since", "1h", "--format", "calls"}, tt.args...)...)
			if r.code != 0 {
				t.Fatalf("export --format calls %v =\n%v", tt.args, r)
			}
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) != len(tt.want)+1 {
				t.Fatalf("export --format calls %v = %q, want a header and %d rows", tt.args, r.stdout, len(tt.want))
			}
			for i, want := range tt.want {
				if got := strings.Join(strings.Fields(lines[i+1])[1:], " "); got != want {
					t.Errorf("export --format calls %v: row %d = %q, want %q", tt.args, i+1, got, want)
				}
			}
		})
	}
}
