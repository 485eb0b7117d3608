package redisstate_test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
	"github.com/m1-agent/m1/internal/testenv"
)

// pair starts two subscribed stores ("sidecars") sharing one Redis through
// their own clients, and waits until a revocation at a reaches b. It
// returns their key prefix.
func pair(t *testing.T, addrA, addrB string) (a, b *redisstate.Store, prefix string) {
	t.Helper()
	prefix = uniquePrefix()
	a = newStore(t, newClient(t, addrA, true), redisstate.Options{Prefix: prefix, Channel: prefix + "events"})
	b = newStore(t, newClient(t, addrB, true), redisstate.Options{Prefix: prefix, Channel: prefix + "events"})
	start(t, a)
	start(t, b)
	warm := state.Revocation{JTI: "warm-up", Until: time.Now().Add(time.Hour)}
	testenv.Eventually(t, 10*time.Second, "warm-up revocation reaches b", func() bool {
		_ = a.Revoke(context.Background(), warm)
		return revoked(t, b, warm.JTI, "")
	})
	return a, b, prefix
}

// Revocation at A reaches B's Revoked by pub/sub. The figures go to the log
// (speed goals live in benchmarks, not assertions).
func TestRevocationPropagation(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b, _ := pair(t, r.Addr, r.Addr)
	ctx := context.Background()
	const n = 200
	lat := make([]time.Duration, 0, n)
	for i := range n {
		rev := state.Revocation{JTI: "p" + strconv.Itoa(i), Until: time.Now().Add(time.Hour)}
		if i%10 == 9 {
			rev = state.Revocation{Sub: "agent-" + strconv.Itoa(i)}
		}
		t0 := time.Now()
		if err := a.Revoke(ctx, rev); err != nil {
			t.Fatalf("Revoke(%+v): %v", rev, err)
		}
		deadline := t0.Add(5 * time.Second)
		for !revoked(t, b, rev.JTI, rev.Sub) {
			if time.Now().After(deadline) {
				t.Fatalf("revocation %+v not seen at b after 5s", rev)
			}
			time.Sleep(20 * time.Microsecond) // a spin would starve the subscriber on small machines
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	t.Logf("revocation propagation A→B over %d revocations (Revoke call + pub/sub + poll): p50 %v, p90 %v, p99 %v, max %v",
		n, lat[n/2], lat[n*90/100], lat[n*99/100], lat[n-1])

	if lifted, err := a.LiftSub(ctx, "agent-9"); err != nil || !lifted {
		t.Fatalf("LiftSub(agent-9) = %v, %v; want true", lifted, err)
	}
	testenv.Eventually(t, 10*time.Second, "lift reaches b", func() bool { return !revoked(t, b, "", "agent-9") })
}

func TestResubscribeReloads(t *testing.T) {
	ctx := context.Background()

	t.Run("redis restarted", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		a, b, _ := pair(t, r.Addr, r.Addr)
		r.Restart(t)
		rev := state.Revocation{JTI: "after-restart", Until: time.Now().Add(time.Hour)}
		testenv.Eventually(t, 10*time.Second, "Revoke at a succeeds after the restart", func() bool { return a.Revoke(ctx, rev) == nil })
		testenv.Eventually(t, 10*time.Second, "b sees a revocation made after the restart", func() bool { return revoked(t, b, rev.JTI, "") })
	})

	t.Run("written while b was disconnected", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		px := startProxy(t, r.Addr)
		_, b, prefix := pair(t, r.Addr, px.Addr())
		px.set(modeCut)
		// Written straight into Redis, with no event: only a reload finds it.
		until := time.Now().Add(time.Hour).UnixMilli()
		raw := newClient(t, r.Addr, true)
		key := prefix + "revocations"
		if err := raw.HSet(ctx, key, "jti:missed", until, "sub:missed-agent", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if revoked(t, b, "missed", "") || revoked(t, b, "", "missed-agent") {
			t.Fatal("b saw a revocation while disconnected")
		}
		px.set(modePass)
		testenv.Eventually(t, 10*time.Second, "b sees the revocations written while it was disconnected", func() bool {
			return revoked(t, b, "missed", "") && revoked(t, b, "", "missed-agent")
		})
	})
}

func TestInvalidateEvents(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	prefix := uniquePrefix()
	got := map[string]chan redisstate.Event{"a": make(chan redisstate.Event, 4), "b": make(chan redisstate.Event, 4)}
	stores := map[string]*redisstate.Store{}
	for _, name := range []string{"a", "b"} {
		stores[name] = newStore(t, newClient(t, r.Addr, true), redisstate.Options{
			Prefix: prefix, Channel: prefix + "events",
			OnInvalidate: func(ev redisstate.Event) { got[name] <- ev },
		})
		start(t, stores[name])
	}
	ctx := context.Background()
	if err := stores["a"].PublishInvalidate(ctx, redisstate.Event{Type: "revoke", JTI: "x"}); err == nil {
		t.Errorf("PublishInvalidate(revoke) = nil, want an error")
	}
	for _, want := range []redisstate.Event{{Type: redisstate.EventBundle, Revision: "rev-2"}, {Type: redisstate.EventFlush}} {
		var ev redisstate.Event
		testenv.Eventually(t, 10*time.Second, "b receives "+want.Type, func() bool {
			if err := stores["a"].PublishInvalidate(ctx, want); err != nil {
				t.Fatalf("PublishInvalidate: %v", err)
			}
			select {
			case ev = <-got["b"]:
				return true
			case <-time.After(100 * time.Millisecond):
				return false
			}
		})
		if ev.Type != want.Type || ev.Revision != want.Revision || ev.Origin == "" {
			t.Errorf("b received %+v, want %+v with an origin", ev, want)
		}
		for len(got["b"]) > 0 {
			<-got["b"]
		}
	}
	select {
	case ev := <-got["a"]:
		t.Errorf("a received its own event %+v", ev)
	case <-time.After(100 * time.Millisecond):
	}
}
