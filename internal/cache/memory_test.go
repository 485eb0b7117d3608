package cache_test

import (
	"context"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/cachetest"
	"github.com/m1-agent/m1/internal/policy"
)

func newMemory(t testing.TB) *cache.Memory {
	t.Helper()
	m, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: 1000, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMemoryConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T) cachetest.Cache { return newMemory(t) })
}

// TestMemoryPurgeEmpties: unlike a shared tier, Memory forgets everything
// on Purge.
func TestMemoryPurgeEmpties(t *testing.T) {
	m := newMemory(t)
	k := cachetest.Key("k")
	m.Set(k, &policy.Decision{Allowed: true})
	if _, tier, ok := m.Get(context.Background(), k); !ok || tier != cache.TierL1 {
		t.Fatalf("Get after Set = %v, %q; want a hit from l1", ok, tier)
	}
	m.Purge()
	if d, _, ok := m.Get(context.Background(), k); ok {
		t.Errorf("Get after Purge = %+v, want a miss", d)
	}
}

// TestMemoryCountsEvictions: entries pushed out for the size are counted;
// a purge is not an eviction.
func TestMemoryCountsEvictions(t *testing.T) {
	m, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: 10, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		m.Set(cachetest.Key(string(rune('a'+i%26))+string(rune(i))), &policy.Decision{Allowed: true})
	}
	// Otter evicts as it maintains, in the background: wait until the
	// count has settled (unchanged over 100 ms of lookups).
	deadline := time.Now().Add(10 * time.Second)
	last, since := m.Evictions(), time.Now()
	for time.Now().Before(deadline) && (last == 0 || time.Since(since) < 100*time.Millisecond) {
		m.Get(context.Background(), cachetest.Key("poll"))
		time.Sleep(time.Millisecond)
		if n := m.Evictions(); n != last {
			last, since = n, time.Now()
		}
	}
	if m.Evictions() == 0 {
		t.Fatalf("Evictions() = 0 after 200 entries in a cache of 10, want some")
	}
	before := m.Evictions()
	m.Purge()
	if got := m.Evictions(); got != before {
		t.Errorf("Evictions() = %d after Purge, want %d (a purge is not an eviction)", got, before)
	}
}
