package store_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

func TestApplyRetention(t *testing.T) {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	c := store.NewChainer("w")
	evs := []store.Event{
		{DecisionID: "old", Time: now.Add(-3 * store.Year), Kind: store.KindDecision, Decision: "allow", Reason: "ok"},
		{DecisionID: "new", Time: now.Add(-time.Hour), Kind: store.KindDecision, Decision: "allow", Reason: "ok"},
	}
	c.Chain(evs)
	if err := s.AppendEvents(ctx, evs); err != nil {
		t.Fatal(err)
	}
	got, err := store.ApplyRetention(ctx, s, now, store.DefaultRetention)
	if err != nil {
		t.Fatal(err)
	}
	if got[store.PruneEvents] != 1 {
		t.Fatalf("ApplyRetention pruned %d events, want 1 (the 3-year-old one): %v", got[store.PruneEvents], got)
	}
	var left []string
	_ = s.Events(ctx, store.Filter{}, func(e store.Event) error { left = append(left, e.DecisionID); return nil })
	if len(left) != 1 || left[0] != "new" {
		t.Fatalf("events left = %v, want [new]", left)
	}
}
