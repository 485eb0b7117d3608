package cache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/cachetest"
	"github.com/m1-agent/m1/internal/cache/rediscache"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/testenv"
)

var _ authz.DecisionCache = (*cache.Tiered)(nil)

// fakeL2 is an in-memory L2 that records its calls.
type fakeL2 struct {
	mu     sync.Mutex
	m      map[cache.Key]*policy.Decision
	gets   atomic.Int64
	sets   atomic.Int64
	purges atomic.Int64
	rev    string
}

func newFakeL2() *fakeL2 { return &fakeL2{m: map[cache.Key]*policy.Decision{}} }

func (f *fakeL2) Get(_ context.Context, k cache.Key) (*policy.Decision, string, bool) {
	f.gets.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.m[k]
	return d, cache.TierL2, ok
}

func (f *fakeL2) Set(k cache.Key, d *policy.Decision) {
	f.sets.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[k] = d
}

func (f *fakeL2) Purge() { f.purges.Add(1) }

func (f *fakeL2) SetRevision(r string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rev = r
}

func TestParseMode(t *testing.T) {
	tests := []struct {
		in      string
		want    cache.Mode
		wantErr bool
	}{
		{"auto", cache.ModeAuto, false},
		{"", cache.ModeAuto, false},
		{"always", cache.ModeAlways, false},
		{"off", cache.ModeOff, false},
		{"Always", 0, true},
		{"on", 0, true},
	}
	for _, tt := range tests {
		got, err := cache.ParseMode(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil && tt.in != "" && got.String() != tt.in {
			t.Errorf("ParseMode(%q).String() = %q", tt.in, got.String())
		}
	}
}

func TestTieredL2HitFillsL1(t *testing.T) {
	l2 := newFakeL2()
	k := cachetest.Key("k")
	want := &policy.Decision{Allowed: true}
	l2.Set(k, want)
	tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: l2, Mode: cache.ModeAlways})
	ctx := context.Background()
	if d, tier, ok := tc.Get(ctx, k); !ok || tier != cache.TierL2 || d != want {
		t.Fatalf("first Get = %p, %q, %v; want the L2 decision from l2", d, tier, ok)
	}
	if d, tier, ok := tc.Get(ctx, k); !ok || tier != cache.TierL1 || d != want {
		t.Fatalf("second Get = %p, %q, %v; want it from l1", d, tier, ok)
	}
	if n := l2.gets.Load(); n != 1 {
		t.Errorf("L2 Get called %d times, want 1", n)
	}
}

func TestTieredModes(t *testing.T) {
	const rtt = time.Millisecond
	tests := []struct {
		name      string
		mode      cache.Mode
		evals     []time.Duration
		connected bool
		wantGet   bool // an L1 miss consults L2
		wantSet   bool // Set writes L2
	}{
		{"auto before any evaluation", cache.ModeAuto, nil, true, false, true},
		{"auto, evaluation cheaper than rtt", cache.ModeAuto, []time.Duration{100 * time.Microsecond}, true, false, true},
		{"auto, evaluation dearer than rtt", cache.ModeAuto, []time.Duration{5 * time.Millisecond}, true, true, true},
		{"auto, dear but disconnected", cache.ModeAuto, []time.Duration{5 * time.Millisecond}, false, false, false},
		{"always", cache.ModeAlways, nil, true, true, true},
		{"always, disconnected", cache.ModeAlways, nil, false, false, false},
		{"off", cache.ModeOff, []time.Duration{time.Second}, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l2 := newFakeL2()
			tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: l2, Mode: tt.mode, RTT: func() time.Duration { return rtt }, Connected: func() bool { return tt.connected }})
			for _, e := range tt.evals {
				tc.ObserveEval(e)
			}
			tc.Get(context.Background(), cachetest.Key("miss"))
			if got := l2.gets.Load() == 1; got != tt.wantGet {
				t.Errorf("L1 miss consulted L2 = %v, want %v", got, tt.wantGet)
			}
			tc.Set(cachetest.Key("set"), &policy.Decision{})
			if got := l2.sets.Load() == 1; got != tt.wantSet {
				t.Errorf("Set wrote L2 = %v, want %v", got, tt.wantSet)
			}
			if s := tc.Stats(); s.L2Enabled != tt.wantGet || s.Mode != tt.mode.String() || s.RTT != rtt || s.Connected != tt.connected {
				t.Errorf("Stats() = %+v", s)
			}
		})
	}
}

// TestTieredAutoFollowsAverage: the mode switches as the evaluation
// average crosses the round trip, both ways.
func TestTieredAutoFollowsAverage(t *testing.T) {
	tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: newFakeL2(), Mode: cache.ModeAuto, RTT: func() time.Duration { return time.Millisecond }})
	for range 50 {
		tc.ObserveEval(4 * time.Millisecond)
	}
	if s := tc.Stats(); !s.L2Enabled || s.EvalAverage < 3*time.Millisecond {
		t.Fatalf("after slow evaluations: Stats() = %+v, want L2 enabled", s)
	}
	for range 50 {
		tc.ObserveEval(100 * time.Microsecond)
	}
	if s := tc.Stats(); s.L2Enabled || s.EvalAverage > 500*time.Microsecond {
		t.Fatalf("after fast evaluations: Stats() = %+v, want L2 disabled", s)
	}
}

func TestTieredPurgeAndRevision(t *testing.T) {
	l2 := newFakeL2()
	tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: l2, Mode: cache.ModeAuto})
	k := cachetest.Key("k")
	tc.Set(k, &policy.Decision{Allowed: true})
	tc.Purge()
	if tc.Len() != 0 {
		t.Errorf("Len after Purge = %d, want 0", tc.Len())
	}
	if l2.purges.Load() != 1 {
		t.Errorf("L2 purges = %d, want 1", l2.purges.Load())
	}
	tc.SetRevision("rev-2")
	if l2.rev != "rev-2" {
		t.Errorf("L2 revision = %q, want rev-2", l2.rev)
	}
	// A nil L2 is L1 alone.
	alone := newTiered(t, cache.TieredOptions{L1: newMemory(t), Mode: cache.ModeAlways})
	alone.Set(k, &policy.Decision{})
	alone.Purge()
	alone.SetRevision("x")
	if _, _, ok := alone.Get(context.Background(), k); ok {
		t.Error("Get after Purge with no L2 hit")
	}
	if s := alone.Stats(); s.Mode != "off" || s.L2Enabled || s.Connected {
		t.Errorf("Stats() with no L2 = %+v", s)
	}
}

func TestTieredStatsJSON(t *testing.T) {
	tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: newFakeL2(), Mode: cache.ModeAlways, RTT: func() time.Duration { return 300 * time.Microsecond }})
	tc.ObserveEval(2 * time.Millisecond)
	b, err := json.Marshal(tc.Stats())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"mode":"always","eval_avg_ns":2000000,"redis_rtt_ns":300000,"redis_connected":true,"l2_enabled":true,"l1_entries":0}`
	if string(b) != want {
		t.Errorf("Stats JSON = %s\nwant %s", b, want)
	}
}

// TestTieredConformance runs the suite against L1 + a real Redis L2, in
// the mode that consults L2 on every L1 miss, and in auto.
func TestTieredConformance(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { client.Close() })
	var n atomic.Int64
	for _, mode := range []cache.Mode{cache.ModeAlways, cache.ModeAuto} {
		t.Run(mode.String(), func(t *testing.T) {
			cachetest.Run(t, func(t *testing.T) cachetest.Cache {
				l2 := rediscache.New(client, rediscache.Options{Prefix: fmt.Sprintf("m1:test:%d:", n.Add(1))})
				ctx, cancel := context.WithCancel(context.Background())
				t.Cleanup(cancel)
				l2.Start(ctx)
				tc := newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: l2, Mode: mode, RTT: func() time.Duration { return 50 * time.Microsecond }})
				tc.ObserveEval(time.Millisecond) // auto: evaluation dearer than the round trip
				return tc
			})
		})
	}
}

// TestTieredSharesAcrossProcesses: what one sidecar evaluated, another
// finds in L2 (through a real Redis) and then holds in its own L1.
func TestTieredSharesAcrossProcesses(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	newSidecar := func() *cache.Tiered {
		client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
		t.Cleanup(func() { client.Close() })
		l2 := rediscache.New(client, rediscache.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		l2.Start(ctx)
		return newTiered(t, cache.TieredOptions{L1: newMemory(t), L2: l2, Mode: cache.ModeAlways})
	}
	a, b := newSidecar(), newSidecar()
	k := cachetest.Key("shared")
	want := cachetest.Decisions()["everything"]
	a.Set(k, want)
	got, tier := cachetest.Eventually(t, b, k)
	if tier != cache.TierL2 {
		t.Errorf("B's first hit came from %q, want l2", tier)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("B got %+v, want %+v", got, want)
	}
	if _, tier, _ := b.Get(context.Background(), k); tier != cache.TierL1 {
		t.Errorf("B's second hit came from %q, want l1", tier)
	}
}

func BenchmarkTieredGetL1Hit(b *testing.B) {
	tc := newTiered(b, cache.TieredOptions{L1: newMemory(b), L2: newFakeL2(), Mode: cache.ModeAuto})
	k := cachetest.Key("k")
	tc.Set(k, &policy.Decision{Allowed: true})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := tc.Get(ctx, k); !ok {
			b.Fatal("miss")
		}
	}
}

// newTiered returns cache.NewTiered(o), failing tb on an error.
func newTiered(tb testing.TB, o cache.TieredOptions) *cache.Tiered {
	tb.Helper()
	tc, err := cache.NewTiered(o)
	if err != nil {
		tb.Fatal(err)
	}
	return tc
}

func TestNewTieredNamesTheBadField(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    cache.TieredOptions
		want string
	}{
		{"no L1", cache.TieredOptions{}, "L1"},
		{"unknown mode", cache.TieredOptions{L1: newMemory(t), Mode: cache.Mode(7)}, "Mode"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := cache.NewTiered(tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewTiered(%s) = %v, want an error naming %s", tt.name, err, tt.want)
			}
		})
	}
}
