package store_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func sample() store.Event {
	return store.Event{
		DecisionID: "dec-1", Time: t0.Add(1500 * time.Microsecond), Kind: store.KindDecision,
		Principal: "agent-a", RunID: "run-1", ProposalID: "prop-1", Tool: "fs.write",
		ArgsSHA256: strings.Repeat("ab", 32), Args: json.RawMessage(`{"path":"/w/a.txt"}`),
		Decision: "deny", Reason: "token_expired", Detail: "exp in the past", Status: 403,
		PolicyRevision: "rev-7", TokenJTI: "jti-1", LatencyMicros: 250, CacheTier: "l1",
		Writer: "m1-authz/h/1/20260301T120000.000000000Z", Seq: 1,
	}
}

// The hash of a fixed event never changes: stored chains depend on it.
func TestHashEventIsStable(t *testing.T) {
	const want = "56587dce755967c6dfeab1a4c3003eb5809650d27cf65c7204f78413f56342bf" // recomputed independently from the spec in HashEvent's doc
	if got := store.HashEvent(sample()); got != want {
		t.Fatalf("HashEvent(sample) = %s, want %s", got, want)
	}
}

// The mark of arguments left out for their size extends the digest input
// by one field, and only when set: chains stored before it existed verify.
func TestHashEventArgsTruncated(t *testing.T) {
	e := sample()
	e.Args, e.ArgsTruncated = nil, true
	const want = "13e08a363870831625458d4ea8f69db974311157c6da32c57cf97986994a7eb3" // recomputed independently from the spec in HashEvent's doc
	if got := store.HashEvent(e); got != want {
		t.Fatalf("HashEvent(sample, args truncated) = %s, want %s", got, want)
	}
}

// Every field but ID and Hash is covered, and field boundaries are
// unambiguous.
func TestHashEventCoversEveryField(t *testing.T) {
	base := store.HashEvent(sample())
	for _, tc := range []struct {
		name string
		mod  func(e *store.Event)
	}{
		{"writer", func(e *store.Event) { e.Writer += "x" }},
		{"seq", func(e *store.Event) { e.Seq++ }},
		{"prev_hash", func(e *store.Event) { e.PrevHash = "00" }},
		{"decision_id", func(e *store.Event) { e.DecisionID += "x" }},
		{"time", func(e *store.Event) { e.Time = e.Time.Add(time.Microsecond) }},
		{"kind", func(e *store.Event) { e.Kind = "proposal" }},
		{"principal", func(e *store.Event) { e.Principal += "x" }},
		{"run_id", func(e *store.Event) { e.RunID += "x" }},
		{"proposal_id", func(e *store.Event) { e.ProposalID += "x" }},
		{"tool", func(e *store.Event) { e.Tool += "x" }},
		{"args_sha256", func(e *store.Event) { e.ArgsSHA256 = "" }},
		{"args", func(e *store.Event) { e.Args = json.RawMessage(`{"path": "/w/a.txt"}`) }},
		{"args nil", func(e *store.Event) { e.Args = nil }},
		{"decision", func(e *store.Event) { e.Decision = "allow" }},
		{"reason", func(e *store.Event) { e.Reason = "ok" }},
		{"detail", func(e *store.Event) { e.Detail = "" }},
		{"status", func(e *store.Event) { e.Status = 200 }},
		{"policy_revision", func(e *store.Event) { e.PolicyRevision = "rev-8" }},
		{"token_jti", func(e *store.Event) { e.TokenJTI = "" }},
		{"latency_us", func(e *store.Event) { e.LatencyMicros++ }},
		{"cache_tier", func(e *store.Event) { e.CacheTier = "l2" }},
		{"args_truncated", func(e *store.Event) { e.Args, e.ArgsTruncated = nil, true }},
		{"boundary", func(e *store.Event) { e.Principal, e.RunID = "agent-arun-1", "" }},
	} {
		e := sample()
		tc.mod(&e)
		if store.HashEvent(e) == base {
			t.Errorf("HashEvent ignores %s", tc.name)
		}
	}
	e := sample()
	e.ID, e.Hash = 99, "whatever"
	if store.HashEvent(e) != base {
		t.Error("HashEvent depends on ID or Hash")
	}
	e = sample()
	e.Time = e.Time.Add(999 * time.Nanosecond).In(time.FixedZone("X", 7200))
	if store.HashEvent(e) != base {
		t.Error("HashEvent depends on sub-microsecond time or the zone")
	}
}

func TestChainerLinksAndNormalizes(t *testing.T) {
	c := store.NewChainer("w")
	ev := []store.Event{sample(), sample(), sample()}
	ev[0].Time = t0.Add(123456789 * time.Nanosecond).In(time.FixedZone("X", 3600))
	ev[1].Detail, ev[1].Args = "a\x00b\xff", json.RawMessage("{broken")
	ev[2].Args = json.RawMessage{}
	c.Chain(ev[:1])
	c.Chain(ev[1:])
	prev := ""
	for i, e := range ev {
		if e.Writer != "w" || e.Seq != int64(i+1) || e.PrevHash != prev || e.Hash != store.HashEvent(e) {
			t.Fatalf("event %d chained as writer %q seq %d prev %q hash %q", i, e.Writer, e.Seq, e.PrevHash, e.Hash)
		}
		prev = e.Hash
	}
	if got := ev[0].Time; got.Location() != time.UTC || got.Nanosecond() != 123456000 {
		t.Errorf("Time = %v, want UTC to the microsecond", got)
	}
	if ev[1].Detail != "a\uFFFDb\uFFFD" {
		t.Errorf("Detail = %q, want NUL and invalid UTF-8 replaced", ev[1].Detail)
	}
	if string(ev[1].Args) != `"{broken"` {
		t.Errorf("invalid Args = %s, want a JSON string", ev[1].Args)
	}
	if ev[2].Args != nil {
		t.Errorf("empty Args = %q, want nil", ev[2].Args)
	}
	if seq, hash := c.Last(); seq != 3 || hash != ev[2].Hash {
		t.Errorf("Last = %d, %s", seq, hash)
	}
	more := []store.Event{sample()}
	store.ResumeChainer("w", 3, ev[2].Hash).Chain(more)
	if b := store.VerifyChain(append(ev, more...)); b != nil {
		t.Fatalf("VerifyChain(resumed chain) = %v", b)
	}
}

// Chained events survive a JSON round trip (the sidecar's spool) with
// their hashes intact.
func TestChainedEventsSurviveJSON(t *testing.T) {
	ev := []store.Event{sample(), sample(), sample()}
	ev[0].Args = json.RawMessage(`{ "cmd" : "a < b && c > d", "u": "\u2028", "n": [1, 2] }`)
	ev[1].Detail = "tab\tnul\x00 <html>"
	ev[2].Time = t0.Add(time.Nanosecond * 999)
	store.NewChainer("w").Chain(ev)
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	var back []store.Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for i, e := range back {
		if store.HashEvent(e) != ev[i].Hash || string(e.Args) != string(ev[i].Args) {
			t.Fatalf("event %d after JSON: args %s (was %s), hash changed", i, e.Args, ev[i].Args)
		}
	}
	if b := store.VerifyChain(back); b != nil {
		t.Fatalf("VerifyChain(after JSON) = %v", b)
	}
}

func TestChainerConcurrent(t *testing.T) {
	c := store.NewChainer("w")
	var mu sync.Mutex
	var all []store.Event
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				ev := []store.Event{sample(), sample()}
				c.Chain(ev)
				mu.Lock()
				all = append(all, ev...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	bySeq := make([]store.Event, len(all))
	for _, e := range all {
		bySeq[e.Seq-1] = e
	}
	if b := store.VerifyChain(bySeq); b != nil {
		t.Fatalf("VerifyChain = %v", b)
	}
}

func TestWriterID(t *testing.T) {
	id := store.WriterID("m1-authz", time.Date(2026, 3, 1, 12, 0, 0, 5, time.UTC))
	parts := strings.Split(id, "/")
	if len(parts) != 4 || parts[0] != "m1-authz" || parts[3] != "20260301T120000.000000005Z" {
		t.Fatalf("WriterID = %q, want m1-authz/<host>/<pid>/20260301T120000.000000005Z", id)
	}
}

func TestEventValidate(t *testing.T) {
	ok := sample()
	ok.Hash = store.HashEvent(ok)
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate(chained) = %v", err)
	}
	// Text a Chainer would have cleaned (NUL, invalid UTF-8) is refused:
	// a backend stores text exactly and cannot store these.
	for name, edit := range map[string]func(*store.Event){
		"detail NUL":      func(e *store.Event) { e.Detail = "a\x00b" },
		"principal UTF-8": func(e *store.Event) { e.Principal = "spiffe://\xff" },
		"writer UTF-8":    func(e *store.Event) { e.Writer = "w\xc3" },
		"args NUL":        func(e *store.Event) { e.Args = []byte("\"\x00\"") },
		"no hash":         func(e *store.Event) { e.Hash = "" },
		"truncated args":  func(e *store.Event) { e.ArgsTruncated = true },
	} {
		e := ok
		edit(&e)
		if err := e.Validate(); !errors.Is(err, store.ErrInvalidEvent) {
			t.Errorf("Validate(%s) = %v, want ErrInvalidEvent", name, err)
		}
	}
}

func TestLoadMigrations(t *testing.T) {
	good := fstest.MapFS{
		"m/0002_more.sql": {Data: []byte("B")},
		"m/0001_init.sql": {Data: []byte("A")},
		"m/README":        {Data: []byte("x")},
	}
	ms, err := store.LoadMigrations(good, "m")
	if err != nil || len(ms) != 2 || ms[0].Version != 1 || ms[0].Name != "init" || ms[1].SQL != "B" {
		t.Fatalf("LoadMigrations = %+v, %v", ms, err)
	}
	for name, fsys := range map[string]fstest.MapFS{
		"duplicate": {"m/0001_a.sql": {}, "m/1_b.sql": {}},
		"bad name":  {"m/init.sql": {}},
		"zero":      {"m/0000_a.sql": {}},
		"empty":     {"m/README": {}},
	} {
		if _, err := store.LoadMigrations(fsys, "m"); err == nil {
			t.Errorf("LoadMigrations(%s) = nil error", name)
		}
	}
}

func TestPlanPrune(t *testing.T) {
	for _, tc := range []struct {
		kinds []string
		want  string
	}{
		{nil, "{Events:true EventKinds:[] Runs:true ToolCalls:true Proposals:true RevokedTokens:true}"},
		{[]string{store.KindDecision, "proposal", store.KindDecision}, "{Events:true EventKinds:[decision proposal] Runs:false ToolCalls:false Proposals:false RevokedTokens:false}"},
		{[]string{store.KindDecision, store.PruneEvents}, "{Events:true EventKinds:[] Runs:false ToolCalls:false Proposals:false RevokedTokens:false}"},
		{[]string{store.PruneRevokedTokens}, "{Events:false EventKinds:[] Runs:false ToolCalls:false Proposals:false RevokedTokens:true}"},
	} {
		if got := fmt.Sprintf("%+v", store.PlanPrune(tc.kinds)); got != tc.want {
			t.Errorf("PlanPrune(%v) = %s, want %s", tc.kinds, got, tc.want)
		}
	}
}

// StoredArgsLen is the length json.Marshal gives compact arguments as a
// json.RawMessage (the form Chain stores), escapes included.
func TestStoredArgsLen(t *testing.T) {
	for _, args := range []string{`{}`, `{"a":"<b>&amp;</b>"}`, "{\"s\":\"\u2028 \u2029 ok\"}", `["x<y",1,{"z":">"}]`, `"plain"`} {
		m, err := json.Marshal(json.RawMessage(args))
		if err != nil {
			t.Fatal(err)
		}
		if got := store.StoredArgsLen([]byte(args)); got != len(m) {
			t.Errorf("StoredArgsLen(%s) = %d, json.Marshal gives %d bytes", args, got, len(m))
		}
	}
}
