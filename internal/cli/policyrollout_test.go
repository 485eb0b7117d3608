package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
	"github.com/m1-agent/m1/internal/store"
)

func TestPolicySign(t *testing.T) {
	pub, priv := sourcetest.KeyPair(t)
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	bundle := sourcetest.WriteDir(t, t.TempDir(), sourcetest.Bundle("one"))
	verify, err := policy.NewVerification(pub)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "bundle.tar.gz")
	if r := m1(t, "", "policy", "sign", bundle, "--key", keyFile, "--out", out); r.code != 0 {
		t.Fatalf("m1 policy sign --out: %v", r)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policy.ReadTarGz(raw, policy.ReadOptions{Verification: verify}); err != nil {
		t.Errorf("the signed tarball does not verify: %v", err)
	}
	if r := m1(t, "", "policy", "sign", bundle, "--key", keyFile, "--signatures"); r.code != 0 {
		t.Fatalf("m1 policy sign --signatures: %v", r)
	}
	if _, err := policy.ReadDir(bundle, policy.ReadOptions{Verification: verify}); err != nil {
		t.Errorf("the signed directory does not verify: %v", err)
	}
	// Re-signing replaces the signature rather than signing it.
	if r := m1(t, "", "policy", "sign", bundle, "--key", keyFile, "--signatures"); r.code != 0 {
		t.Fatalf("m1 policy sign --signatures again: %v", r)
	}
	if _, err := policy.ReadDir(bundle, policy.ReadOptions{Verification: verify}); err != nil {
		t.Errorf("the re-signed directory does not verify: %v", err)
	}
	if r := m1(t, "", "policy", "sign", bundle, "--key", keyFile); r.code != 2 {
		t.Errorf("m1 policy sign without --out or --signatures: %v, want exit 2", r)
	}
}

func TestPolicyReplay(t *testing.T) {
	db := newSQLiteDB(t)
	now := time.Now().UTC()
	ev := func(id, tool, decision, reason, args string, at time.Duration) store.Event {
		e := store.Event{DecisionID: id, Time: now.Add(-at), Kind: store.KindDecision, Principal: "agent-1", Tool: tool,
			ArgsSHA256: "x", Decision: decision, Reason: reason, Status: 200, PolicyRevision: "old"}
		if args != "" {
			e.Args = json.RawMessage(args)
		}
		return e
	}
	db.add(t, "m1-authz/test", []store.Event{
		ev("d-read", "read_file", "allow", "ok", `{"path":"/etc/hosts"}`, time.Hour),
		ev("d-secret", "read_file", "allow", "ok", `{"path":"/secret/key"}`, time.Hour),
		ev("d-list", "list_dir", "allow", "ok", `{"path":"/"}`, time.Hour),
		ev("d-write", "write_file", "deny", "policy_denied", "", time.Hour),
		ev("d-old", "read_file", "allow", "ok", `{"path":"/secret/old"}`, 48*time.Hour),
		ev("d-token", "read_file", "deny", "token_expired", "", time.Hour),
	})
	// The candidate denies reads under /secret: two of the last day's
	// decisions change; the 48h-old one is outside --since.
	candidate := sourcetest.WriteDir(t, t.TempDir(), map[string]string{"authz.rego": `package m1.authz

import rego.v1

default decision := {"allowed": false, "reason": "default_deny"}

decision := {"allowed": true} if {
	input.m1.tool in {"read_file", "list_dir"}
	not startswith(input.m1.args.path, "/secret/")
}

decision := {"allowed": false, "reason": "secret_path", "http_status": 403} if startswith(input.m1.args.path, "/secret/")
`})
	r := m1Env(t, map[string]string{}, "policy", "replay", candidate, "--since", "24h", "--db", db.dsn, "--json")
	if r.code != 1 {
		t.Fatalf("m1 policy replay: %v, want exit 1 (a decision changes)", r)
	}
	var rep replayReport
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, r.stdout)
	}
	if len(rep.Changed) != 1 || rep.Changed[0].DecisionID != "d-secret" || rep.Changed[0].Now != "deny" || rep.Changed[0].NowReason != "secret_path" {
		t.Errorf("changed = %+v, want d-secret allow -> deny secret_path", rep.Changed)
	}
	if rep.Replayed != 3 || rep.Skipped["arguments not kept"] != 1 || rep.Skipped["not decided by the policy"] != 1 {
		t.Errorf("replayed %d, skipped %v; want 3 replayed, d-write skipped (arguments not kept), d-token (not decided by the policy)", rep.Replayed, rep.Skipped)
	}
	// The table names the decision; a candidate that changes nothing exits 0.
	r = m1Env(t, map[string]string{"M1_DATABASE_URL": db.dsn}, "policy", "replay", candidate, "--since", "24h")
	if r.code != 1 || !strings.Contains(r.stdout, "d-secret") || !strings.Contains(r.stdout, "1 would change") {
		t.Errorf("m1 policy replay (table): %v", r)
	}
	same := sourcetest.WriteDir(t, t.TempDir(), map[string]string{"authz.rego": "package m1.authz\n\nimport rego.v1\n\ndecision := {\"allowed\": input.m1.tool in {\"read_file\", \"list_dir\"}}\n"})
	if r := m1Env(t, map[string]string{}, "policy", "replay", same, "--since", "24h", "--db", db.dsn); r.code != 0 {
		t.Errorf("m1 policy replay (same decisions): %v, want exit 0", r)
	}
}

// --since takes what m1 audit export's does: an age (a Go duration, or
// days, weeks, years) or an RFC 3339 time.
func TestPolicyReplaySince(t *testing.T) {
	db := newSQLiteDB(t)
	now := time.Now().UTC()
	ev := func(id string, at time.Duration) store.Event {
		return store.Event{DecisionID: id, Time: now.Add(-at), Kind: store.KindDecision, Principal: "agent-1", Tool: "write_file",
			ArgsSHA256: "x", Decision: "allow", Reason: "ok", Status: 200, PolicyRevision: "old"}
	}
	db.add(t, "m1-authz/test", []store.Event{ev("d-1h", time.Hour), ev("d-3d", 72*time.Hour), ev("d-10d", 240*time.Hour)})
	// The candidate denies every call: each replayed decision changes.
	candidate := sourcetest.WriteDir(t, t.TempDir(), map[string]string{"authz.rego": "package m1.authz\n\nimport rego.v1\n\ndecision := {\"allowed\": false, \"reason\": \"no\"}\n"})
	for _, tt := range []struct {
		since    string
		wantCode int
		want     int    // decisions replayed
		stderr   string // on exit 2
	}{
		{"2h", exitDeny, 1, ""},
		{"7d", exitDeny, 2, ""},
		{"2w", exitDeny, 3, ""},
		{now.Add(-100 * time.Hour).Format(time.RFC3339), exitDeny, 2, ""},
		{"xyz", exitError, 0, `--since "xyz": want an RFC 3339 time`},
		{"0s", exitError, 0, "--since must be in the past"},
		{"now", exitError, 0, "--since must be in the past"},
		{now.Add(time.Hour).Format(time.RFC3339), exitError, 0, "--since must be in the past"},
		{"-1h", exitError, 0, "negative"},
	} {
		t.Run(tt.since, func(t *testing.T) {
			r := m1Env(t, map[string]string{}, "policy", "replay", candidate, "--since", tt.since, "--db", db.dsn, "--json")
			if r.code != tt.wantCode {
				t.Fatalf("m1 policy replay --since %s: %v, want exit %d", tt.since, r, tt.wantCode)
			}
			if tt.wantCode == exitError {
				if !strings.Contains(r.stderr, tt.stderr) {
					t.Errorf("m1 policy replay --since %s: stderr %q, want %q", tt.since, r.stderr, tt.stderr)
				}
				return
			}
			var rep replayReport
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("--json output: %v\n%s", err, r.stdout)
			}
			if rep.Replayed != tt.want {
				t.Errorf("m1 policy replay --since %s: replayed %d, want %d", tt.since, rep.Replayed, tt.want)
			}
		})
	}
	// The default is the last day.
	if r := m1Env(t, map[string]string{}, "policy", "replay", candidate, "--db", db.dsn); r.code != exitDeny || !strings.Contains(r.stdout, "1 decisions since") {
		t.Errorf("m1 policy replay (default --since): %v", r)
	}
}
