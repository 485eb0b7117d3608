// Package cachetest is the conformance suite of M1's decision caches: the
// same tests run against every implementation (the in-process Memory, the
// Redis L2, and the Tiered pair), so that they stay interchangeable behind
// authz.DecisionCache.
//
// Writes to a shared tier may be asynchronous, so the suite expects a
// decision to become visible after Set within a few seconds, not at once.
package cachetest

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/policy"
)

// Cache is the contract under test (authz.DecisionCache):
//
//   - Get returns the decision stored under the key, reflect.DeepEqual to
//     the one given to Set (nil and empty slices and maps kept apart), and
//     the tier that answered (cache.TierL1 or cache.TierL2); it returns
//     promptly, also when ctx is already done.
//   - Set makes the decision visible to Get, possibly after a delay.
//   - Purge drops what the cache holds in its process. A shared tier may
//     keep its entries: a key determines its decision (it hashes the bundle
//     revision and the policy input), so after Purge a Get misses or
//     returns the very decision that was set, never another.
//   - All methods are safe for concurrent use.
type Cache interface {
	Get(ctx context.Context, k cache.Key) (*policy.Decision, string, bool)
	Set(k cache.Key, d *policy.Decision)
	Purge()
}

// visibleWithin bounds how long a Set may take to become visible.
const visibleWithin = 5 * time.Second

// Run runs the suite. newCache returns an empty cache for one subtest,
// cleaned up with t.
func Run(t *testing.T, newCache func(t *testing.T) Cache) {
	t.Run("Miss", func(t *testing.T) { testMiss(t, newCache(t)) })
	t.Run("GetAfterSet", func(t *testing.T) { testGetAfterSet(t, newCache(t)) })
	t.Run("DistinctKeys", func(t *testing.T) { testDistinctKeys(t, newCache(t)) })
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newCache(t)) })
	t.Run("Purge", func(t *testing.T) { testPurge(t, newCache(t)) })
	t.Run("DoneContext", func(t *testing.T) { testDoneContext(t, newCache(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newCache(t)) })
}

// Key returns a key derived from s.
func Key(s string) cache.Key { return sha256.Sum256([]byte(s)) }

// Eventually polls Get until it hits or visibleWithin passes.
func Eventually(t testing.TB, c Cache, k cache.Key) (*policy.Decision, string) {
	t.Helper()
	deadline := time.Now().Add(visibleWithin)
	for {
		if d, tier, ok := c.Get(context.Background(), k); ok {
			return d, tier
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get(%x…) still misses %v after Set", k[:4], visibleWithin)
			return nil, ""
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func checkTier(t testing.TB, tier string) {
	t.Helper()
	if tier != cache.TierL1 && tier != cache.TierL2 {
		t.Errorf("Get tier = %q, want %q or %q", tier, cache.TierL1, cache.TierL2)
	}
}

func testMiss(t *testing.T, c Cache) {
	d, _, ok := c.Get(context.Background(), Key(t.Name()))
	if ok || d != nil {
		t.Errorf("Get(never set) = %+v, %v; want nil, false", d, ok)
	}
}

func testGetAfterSet(t *testing.T, c Cache) {
	k := Key(t.Name())
	want := &policy.Decision{Allowed: true}
	c.Set(k, want)
	got, tier := Eventually(t, c, k)
	checkTier(t, tier)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Get after Set = %+v, want %+v", got, want)
	}
}

func testDistinctKeys(t *testing.T, c Cache) {
	k1 := Key(t.Name())
	k2 := k1
	k2[len(k2)-1] ^= 1 // one bit apart
	d1 := &policy.Decision{Allowed: true}
	d2 := &policy.Decision{Reason: "no"}
	c.Set(k1, d1)
	c.Set(k2, d2)
	if got, _ := Eventually(t, c, k1); !reflect.DeepEqual(got, d1) {
		t.Errorf("Get(k1) = %+v, want %+v", got, d1)
	}
	if got, _ := Eventually(t, c, k2); !reflect.DeepEqual(got, d2) {
		t.Errorf("Get(k2) = %+v, want %+v", got, d2)
	}
	k3 := k1
	k3[0] ^= 0x80
	if d, _, ok := c.Get(context.Background(), k3); ok {
		t.Errorf("Get(k3, never set) = %+v, want a miss", d)
	}
}

// Decisions are named decisions that exercise every field of
// policy.Decision, with the shapes the policy package produces (metadata
// as ast.JSON gives it: json.Number, []any, map[string]any).
func Decisions() map[string]*policy.Decision {
	return map[string]*policy.Decision{
		"zero deny":      {},
		"plain allow":    {Allowed: true},
		"deny with body": {Reason: "blocked", HTTPStatus: 451, Body: `{"error":"x"}`, HasBody: true},
		"empty body":     {HasBody: true},
		"empty not nil": {
			Headers: []policy.Header{}, ResponseHeadersToAdd: []policy.Header{},
			RequestHeadersToRemove: []string{}, DynamicMetadata: map[string]any{},
		},
		"everything": {
			Allowed:    true,
			Reason:     `{"code":7}`,
			HTTPStatus: 200,
			Headers: []policy.Header{
				{Key: "x-a", Value: "1"}, {Key: "x-a", Value: "2"}, {Key: "x-empty", Value: ""},
			},
			ResponseHeadersToAdd:   []policy.Header{{Key: "set-cookie", Value: "a=b; Path=/; HttpOnly"}},
			RequestHeadersToRemove: []string{"authorization", "x-m1-approval-token"},
			Body:                   "line1\nline2\t<b>&amp;</b> \u2028 \"quoted\" \\ ",
			HasBody:                true,
			DynamicMetadata: map[string]any{
				"decision_id":  "d-1",
				"int":          json.Number("42"),
				"neg":          json.Number("-0.5e10"),
				"big":          json.Number("123456789012345678901234567890"),
				"frac":         json.Number("1.50"),
				"bool":         false,
				"null":         nil,
				"list":         []any{json.Number("1"), "two", nil, true, []any{}, map[string]any{}},
				"nested":       map[string]any{"a": map[string]any{"b": []any{map[string]any{"c": "d"}}}},
				"unicode ключ": "значение ✓ 😀",
				"":             "empty key",
			},
		},
	}
}

func testRoundTrip(t *testing.T, c Cache) {
	for name, want := range Decisions() {
		c.Set(Key(t.Name()+name), want)
	}
	for name, want := range Decisions() {
		got, tier := Eventually(t, c, Key(t.Name()+name))
		checkTier(t, tier)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: Get = %#v\nwant %#v", name, got, want)
		}
	}
}

func testPurge(t *testing.T, c Cache) {
	k := Key(t.Name())
	want := &policy.Decision{Allowed: true, Reason: "before purge"}
	c.Set(k, want)
	Eventually(t, c, k)
	c.Purge()
	if got, _, ok := c.Get(context.Background(), k); ok && !reflect.DeepEqual(got, want) {
		t.Errorf("Get after Purge = %+v; want a miss or the decision set (%+v)", got, want)
	}
	k2 := Key(t.Name() + "after")
	c.Set(k2, want)
	if got, _ := Eventually(t, c, k2); !reflect.DeepEqual(got, want) {
		t.Errorf("Get of a key set after Purge = %+v, want %+v", got, want)
	}
}

func testDoneContext(t *testing.T, c Cache) {
	k := Key(t.Name())
	c.Set(k, &policy.Decision{Allowed: true})
	Eventually(t, c, k)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Get(ctx, k)                 // a hit from memory or a miss: both fine
		c.Get(ctx, Key(t.Name()+"x")) // a miss
	}()
	select {
	case <-done:
	case <-time.After(visibleWithin):
		t.Fatal("Get with a done context did not return")
	}
}

func testConcurrent(t *testing.T, c Cache) {
	const keys, workers, ops = 16, 8, 300
	decision := func(i int) *policy.Decision {
		return &policy.Decision{Allowed: i%2 == 0, Reason: fmt.Sprint("r", i), DynamicMetadata: map[string]any{"i": json.Number(fmt.Sprint(i))}}
	}
	key := func(i int) cache.Key { return Key(fmt.Sprint(t.Name(), i)) }
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for n := range ops {
				i := (w*7 + n) % keys
				if n%3 == 0 {
					c.Set(key(i), decision(i))
					continue
				}
				if n%50 == 49 && w == 0 {
					c.Purge()
				}
				if got, tier, ok := c.Get(context.Background(), key(i)); ok {
					if tier != cache.TierL1 && tier != cache.TierL2 {
						t.Errorf("Get tier = %q", tier)
					}
					if !reflect.DeepEqual(got, decision(i)) {
						t.Errorf("Get(key %d) = %+v, want %+v", i, got, decision(i))
					}
				}
			}
		})
	}
	wg.Wait()
	for i := range keys {
		c.Set(key(i), decision(i))
	}
	for i := range keys {
		if got, _ := Eventually(t, c, key(i)); !reflect.DeepEqual(got, decision(i)) {
			t.Errorf("after the storm: Get(key %d) = %+v, want %+v", i, got, decision(i))
		}
	}
}
