package admin

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/store"
)

func TestAnalyzeApprovals(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := func(agent, tool, args, status, approver string, wait time.Duration) store.ProposalDecision {
		return store.ProposalDecision{Agent: agent, Tool: tool, ArgsSHA256: args, Status: status, Approver: approver, CreatedAt: t0, DecidedAt: t0.Add(wait)}
	}
	doc := AnalyzeApprovals(t0.Add(-time.Hour), []store.ProposalDecision{
		d("a", "read", "h1", store.ProposalExecuted, "alice", 500*time.Millisecond),
		d("a", "read", "h1", store.ProposalApproved, "alice", time.Second),
		d("a", "read", "h1", store.ProposalFailed, "bob", 30*time.Second),  // approved, then the dispatch failed
		d("a", "read", "h2", store.ProposalApproved, "bob", 2*time.Second), // other arguments; 2 s is not under 2 s
		d("b", "read", "h1", store.ProposalApproved, "auto-risk:read", 0),  // no person decided
		d("a", "read", "h1", store.ProposalExecuted, "grant:alice", 0),     // nor here: a run's grant
		d("b", "write", "h3", store.ProposalRejected, "", time.Minute),
		d("b", "write", "h3", store.ProposalExpired, "", time.Hour),
	}, false)
	if doc.Decided != 8 || doc.Approved != 4 || doc.AutoApproved != 1 || doc.Granted != 1 || doc.Rejected != 1 || doc.Expired != 1 {
		t.Errorf("counts = decided %d approved %d auto %d granted %d rejected %d expired %d, want 8 4 1 1 1 1",
			doc.Decided, doc.Approved, doc.AutoApproved, doc.Granted, doc.Rejected, doc.Expired)
	}
	if doc.RubberStamp.Count != 2 || doc.RubberStamp.Rate == nil || *doc.RubberStamp.Rate != 0.5 {
		t.Errorf("rubber stamp = %+v, want 2 of 4 (under 2 s)", doc.RubberStamp)
	}
	tta := doc.TimeToApproval
	if tta.Count != 4 || tta.Buckets[0].Count != 3 || tta.Buckets[3].Count != 1 || *tta.P50Seconds != 1 || *tta.MaxSeconds != 30 {
		t.Errorf("time to approval = %+v, want 4: three ≤ 2 s, one ≤ 60 s; p50 1 s, max 30 s", tta)
	}
	if len(doc.ByOperator) != 2 || doc.ByOperator[0].Operator != "alice" || doc.ByOperator[0].UnderStamp != 2 || doc.ByOperator[1].Operator != "bob" || *doc.ByOperator[1].MedianSeconds != 2 {
		t.Errorf("by operator = %+v, want alice (2, both stamped) then bob (median 2 s)", doc.ByOperator)
	}
	if len(doc.GrantCandidates) != 1 || doc.GrantCandidates[0].Agent != "a" || doc.GrantCandidates[0].Approvals != 3 ||
		len(doc.GrantCandidates[0].Operators) != 2 || !doc.GrantCandidates[0].LastAt.Equal(t0.Add(30*time.Second)) {
		t.Errorf("grant candidates = %+v, want agent a, read h1, 3 approvals by alice and bob", doc.GrantCandidates)
	}

	empty := AnalyzeApprovals(t0, nil, false)
	if empty.RubberStamp.Rate != nil || empty.TimeToApproval.P50Seconds != nil || empty.ByOperator == nil || empty.GrantCandidates == nil {
		t.Errorf("no decisions = %+v, want null rate and quantiles, empty lists", empty)
	}
}

// The ring keeps Size samples, computes rates between samples, and serves
// the charts of a tab oldest first.
func TestRing(t *testing.T) {
	reg := prometheus.NewRegistry()
	checks := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "m1_policy_checks_total"}, []string{"decision", "reason"})
	reg.MustRegister(checks)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := NewRing(RingOptions{Gatherer: reg, Step: time.Second, Size: 3, Now: func() time.Time { return now },
		Extra: func(context.Context) map[string]float64 { return map[string]float64{ExtraCacheEntries: 7} }})
	for i := range 4 {
		checks.WithLabelValues("allow", "ok").Add(2)
		if i == 3 {
			checks.WithLabelValues("deny", "policy_denied").Add(1)
		}
		r.Sample(context.Background())
		now = now.Add(time.Second)
	}
	doc, err := r.History(context.Background(), TabOperations, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if doc.Source != "process" || len(doc.Times) != 3 || doc.Times[0] != float64(now.Add(-3*time.Second).Unix()) {
		t.Fatalf("history = %+v, want 3 samples (the size), oldest first", doc)
	}
	var rate *HistoryPanel
	for i, p := range doc.Panels {
		if p.Tab != TabOperations {
			t.Errorf("panel %s of tab %s in the operations history", p.ID, p.Tab)
		}
		if p.ID == "checks_rate" {
			rate = &doc.Panels[i]
		}
	}
	if rate == nil || len(rate.Series) != 2 || rate.Series[0].Label != "allow" || *rate.Series[0].Values[2] != 2 ||
		rate.Series[1].Values[1] != nil || *rate.Series[1].Values[2] != 1 {
		t.Fatalf("checks_rate = %+v, want allow 2/s throughout, deny 1/s in the last sample only", rate)
	}
	cache, _ := r.History(context.Background(), TabCache, time.Hour)
	for _, p := range cache.Panels {
		if p.ID == "cache_entries" && (len(p.Series) != 1 || *p.Series[0].Values[0] != 7) {
			t.Errorf("cache_entries = %+v, want the extra's 7", p)
		}
	}
	short, _ := r.History(context.Background(), "", 2500*time.Millisecond)
	if len(short.Times) != 2 {
		t.Errorf("history of the last 2.5 s has %d samples, want 2", len(short.Times))
	}
}

func TestHistoryDocParams(t *testing.T) {
	doc := HistoryDoc(NewRing(RingOptions{Gatherer: prometheus.NewRegistry()}))
	for q, ok := range map[string]bool{"": true, "?tab=cache&range=15m": true, "?tab=nope": false, "?range=10s": false, "?range=200h": false, "?range=x": false} {
		_, err := doc(httptest.NewRequest("GET", "/api/m1/dashboard/history"+q, nil))
		if (err == nil) != ok {
			t.Errorf("history%s: error %v, want ok=%v", q, err, ok)
		}
	}
}
