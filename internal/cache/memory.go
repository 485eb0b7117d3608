// Package cache holds M1's decision caches. Memory is the per-process L1
// tier; shared tiers wrap it behind the same methods.
//
// A decision is only ever cached when the policy analysis says the decision
// depends on nothing but the key (see internal/policy); hard checks, use
// limits and approval consumption are never cached.
package cache

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/m1-agent/m1/internal/policy"
)

// Key identifies one cached decision: SHA-256 of the bundle revision and the
// canonical decision input.
type Key [32]byte

// Tier names, as used in the m1_policy_cache_hits_total{tier} label.
const (
	TierL1 = "l1"
	TierL2 = "l2"
)

// MemoryOptions bound the in-process cache.
type MemoryOptions struct {
	MaxEntries int           // at least 1
	TTL        time.Duration // how long a decision stays; at least 1ms
}

// Memory is a bounded, expiring in-process decision cache (otter: S3-FIFO
// eviction, lock-free reads). It is safe for concurrent use.
type Memory struct {
	c         *otter.Cache[Key, *policy.Decision]
	evictions *evictions
}

// NewMemory returns an empty cache; it fails when the options are out of range.
func NewMemory(o MemoryOptions) (*Memory, error) {
	ev := &evictions{}
	c, err := otter.New(&otter.Options[Key, *policy.Decision]{
		MaximumSize:      o.MaxEntries,
		ExpiryCalculator: otter.ExpiryWriting[Key, *policy.Decision](o.TTL),
		StatsRecorder:    ev,
	})
	if err != nil {
		return nil, err
	}
	return &Memory{c: c, evictions: ev}, nil
}

// Get returns the cached decision for k. The decision is shared: callers
// must not modify it.
func (m *Memory) Get(_ context.Context, k Key) (*policy.Decision, string, bool) {
	d, ok := m.c.GetIfPresent(k)
	return d, TierL1, ok
}

// Set stores d under k.
func (m *Memory) Set(k Key, d *policy.Decision) { m.c.Set(k, d) }

// Purge drops every entry.
func (m *Memory) Purge() { m.c.InvalidateAll() }

// SetRevision drops every entry: they belong to another policy revision.
func (m *Memory) SetRevision(string) { m.Purge() }

// ObserveEval does nothing: a single tier has no round trip to weigh.
func (*Memory) ObserveEval(time.Duration) {}

// Len is the number of entries, for the dashboard.
func (m *Memory) Len() int { return m.c.EstimatedSize() }

// Evictions is how many entries the cache evicted since it was made (for
// its size, or expired), as otter counts them; purges are not evictions.
func (m *Memory) Evictions() uint64 { return m.evictions.n.Load() }

// evictions is an otter stats recorder that counts evictions only: the
// hits and misses are M1's metrics already, and the decision path pays
// nothing more than an empty call for them.
type evictions struct{ n atomic.Uint64 }

func (*evictions) RecordHits(int)                  {}
func (*evictions) RecordMisses(int)                {}
func (e *evictions) RecordEviction(uint32)         { e.n.Add(1) }
func (*evictions) RecordLoadSuccess(time.Duration) {}
func (*evictions) RecordLoadFailure(time.Duration) {}
