package redisstate_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
	"github.com/m1-agent/m1/internal/testenv"
)

// issuedNow is a token's iat: whole seconds, like a JWT's.
func issuedNow() time.Time { return time.Unix(time.Now().Unix(), 0) }

// A Redis restarted empty must never let a used approval run again.
func TestFencingRestartEmpty(t *testing.T) {
	ctx := context.Background()

	t.Run("Consume", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		s := newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: uniquePrefix()})
		iat := issuedNow()
		exp := iat.Add(5 * time.Minute)
		if ok, err := consume(ctx, s, "j1", exp); !ok || err != nil {
			t.Fatalf("Consume(j1) = %v, %v; want true", ok, err)
		}
		before := s.Epoch()
		r.Restart(t)
		var (
			ok  bool
			err error
		)
		testenv.Eventually(t, 10*time.Second, "Consume(j1) after the restart answers", func() bool {
			ok, err = consume(ctx, s, "j1", exp)
			return ok || !errors.Is(err, state.ErrUnavailable) || errors.Is(err, state.ErrStateReset)
		})
		if ok || !errors.Is(err, state.ErrStateReset) {
			t.Fatalf("Consume(j1) after an empty restart = %v, %v; want false, ErrStateReset", ok, err)
		}
		// The decision path refuses the token from now on (iat < epoch).
		if !iat.Before(s.Epoch()) || !s.Epoch().After(before) {
			t.Fatalf("Epoch() = %v (was %v); want after the token's iat %v", s.Epoch(), before, iat)
		}
		if ok, err := consume(ctx, s, "j2", exp); !ok || err != nil {
			t.Fatalf("Consume(j2) after the reset = %v, %v; want true", ok, err)
		}
		if ok, err := consume(ctx, s, "j2", exp); ok || err != nil {
			t.Fatalf("second Consume(j2) after the reset = %v, %v; want false", ok, err)
		}
	})

	// With two subscribed sidecars: whichever notices first, the token used
	// before the reset is refused everywhere, and one minted after it works
	// once.
	t.Run("ConsumeIssued on two sidecars", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		a, b, _ := pair(t, r.Addr, r.Addr)
		iat := a.Epoch() // minted at first contact: the earliest iat the fence lets through
		exp := iat.Add(5 * time.Minute)
		if ok, err := consumeIssued(ctx, a, "j1", iat, exp); !ok || err != nil {
			t.Fatalf("ConsumeIssued(j1) = %v, %v; want true", ok, err)
		}
		r.Restart(t)
		for _, s := range []*redisstate.Store{a, b, a, b} {
			var (
				ok  bool
				err error
			)
			testenv.Eventually(t, 10*time.Second, "ConsumeIssued(j1) after the restart answers", func() bool {
				ok, err = consumeIssued(ctx, s, "j1", iat, exp)
				return ok || !errors.Is(err, state.ErrUnavailable) || errors.Is(err, state.ErrStateReset)
			})
			if ok || !errors.Is(err, state.ErrStateReset) {
				t.Fatalf("ConsumeIssued(j1) after an empty restart = %v, %v; want false, ErrStateReset", ok, err)
			}
		}
		if !a.Epoch().Equal(b.Epoch()) || !iat.Before(a.Epoch()) {
			t.Fatalf("epochs a %v, b %v; want equal and after iat %v", a.Epoch(), b.Epoch(), iat)
		}
		fresh := a.Epoch() // a token minted after the reset
		if ok, err := consumeIssued(ctx, b, "j3", fresh, fresh.Add(5*time.Minute)); !ok || err != nil {
			t.Fatalf("ConsumeIssued(j3 minted after the reset) = %v, %v; want true", ok, err)
		}
		if ok, err := consumeIssued(ctx, a, "j3", fresh, fresh.Add(5*time.Minute)); ok || err != nil {
			t.Fatalf("replayed ConsumeIssued(j3) at the other sidecar = %v, %v; want false", ok, err)
		}
	})

	t.Run("CountUse", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{})
		s := newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: uniquePrefix()})
		exp := time.Now().Add(5 * time.Minute)
		if ok, err := count(ctx, s, "g1", 1, exp); !ok || err != nil {
			t.Fatalf("CountUse(g1) = %v, %v; want true", ok, err)
		}
		r.Restart(t)
		var (
			ok  bool
			err error
		)
		testenv.Eventually(t, 10*time.Second, "CountUse(g1) after the restart answers", func() bool {
			ok, err = count(ctx, s, "g1", 1, exp)
			return ok || !errors.Is(err, state.ErrUnavailable) || errors.Is(err, state.ErrStateReset)
		})
		if ok || !errors.Is(err, state.ErrStateReset) {
			t.Fatalf("CountUse(g1) after an empty restart = %v, %v; want false, ErrStateReset", ok, err)
		}
	})
}

// The epoch set after a reset covers the clock margin, and an epoch that
// went backwards (Redis restored from an old backup) is replaced.
func TestEpochValue(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	raw := newClient(t, r.Addr, true)
	for _, tt := range []struct {
		name   string
		margin time.Duration
		stored string // the epoch key's value before the use; "" = missing
	}{
		{"missing, no margin", 0, ""},
		{"missing, 30s margin", 30 * time.Second, ""},
		{"went backwards", 0, "1000"},
		{"malformed", 0, "yesterday"},
		{"not canonical", 0, "0" + strconv.FormatInt(time.Now().Unix()+100, 10)}, // newer, but the use script could never match it
	} {
		t.Run(tt.name, func(t *testing.T) {
			prefix := uniquePrefix()
			s := newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: prefix, EpochMargin: tt.margin})
			adopted := s.Epoch()
			if tt.stored == "" {
				raw.Del(ctx, prefix+"epoch")
			} else {
				raw.Set(ctx, prefix+"epoch", tt.stored, 0)
			}
			t0 := time.Now()
			if ok, err := consume(ctx, s, "j", t0.Add(time.Minute)); ok || !errors.Is(err, state.ErrStateReset) {
				t.Fatalf("Consume after the epoch changed = %v, %v; want false, ErrStateReset", ok, err)
			}
			// The new epoch is the next whole second after now+margin, and
			// always later than the one it replaces.
			e := s.Epoch()
			latest := time.Now().Add(tt.margin + time.Second)
			if l := adopted.Add(time.Second); l.After(latest) {
				latest = l
			}
			if !e.After(adopted) || !e.After(t0.Add(tt.margin)) || e.After(latest) {
				t.Errorf("new epoch %v: want after the old one (%v) and now+margin (%v + %v), not after %v", e, adopted, t0, tt.margin, latest)
			}
			if v, _ := raw.Get(ctx, prefix+"epoch").Result(); v != strconv.FormatInt(e.Unix(), 10) {
				t.Errorf("stored epoch %q, adopted %d", v, e.Unix())
			}
		})
	}
}

// Redis lost the revocations too: the sidecars store their copies again.
func TestRevocationsSurviveReset(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	a, b, _ := pair(t, r.Addr, r.Addr)
	sub := state.Revocation{Sub: "rogue-agent"}
	if err := a.Revoke(ctx, sub); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "b sees the sub revocation", func() bool { return revoked(t, b, "", sub.Sub) })
	r.Restart(t)
	testenv.Eventually(t, 10*time.Second, "the revocation is back in Redis after the reset", func() bool { return listHas(a, sub) })
	if !revoked(t, a, "", sub.Sub) || !revoked(t, b, "", sub.Sub) {
		t.Fatalf("revocation lost locally after the reset: a %v, b %v", revoked(t, a, "", sub.Sub), revoked(t, b, "", sub.Sub))
	}
}

// A sidecar's durable store keeps the revocations taken through it; when
// the sidecar restarts after another one reached an emptied Redis first
// (and set the new epoch, with nothing to write back), its first reload
// stores them in Redis again. A revocation another sidecar lifted after
// it was stored stays lifted; one stored after a lift is written.
func TestRestoredRevocationsOfferedToRedis(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	prefix := uniquePrefix()
	opts := redisstate.Options{Prefix: prefix, Channel: prefix + "events"}
	b := newStore(t, newClient(t, r.Addr, true), opts) // reached Redis first: it holds the epoch
	start(t, b)
	hour := time.Now().Add(time.Hour)
	stale := state.Revocation{Sub: "lifted-since", Stored: time.Now().Add(-time.Minute)}
	if err := b.Revoke(ctx, state.Revocation{Sub: stale.Sub}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.LiftSub(ctx, stale.Sub); err != nil { // lifted at b after the restarted sidecar stored it
		t.Fatal(err)
	}
	if _, err := b.LiftSub(ctx, "revoked-again"); err != nil { // a lift older than the revocation below
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	restored := []state.Revocation{
		{Sub: "agent-7", Stored: time.Now().Add(-time.Minute)},
		{JTI: "stolen-1", Until: hour, Stored: time.Now().Add(-time.Minute)},
		{Sub: "revoked-again", Stored: time.Now()},
		stale,
	}
	a, err := redisstate.New(newClient(t, r.Addr, true), opts)
	if err != nil {
		t.Fatal(err)
	}
	a.Restore(restored)
	if !revoked(t, a, "", "agent-7") || !revoked(t, a, "", stale.Sub) {
		t.Fatal("Restore did not apply the revocations in this process")
	}
	if err := a.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, want := range restored[:3] {
		if !listHas(b, want) {
			t.Errorf("%+v not written to Redis by the restarted sidecar's first reload", want)
		}
		testenv.Eventually(t, 10*time.Second, "the other sidecar learns "+want.Sub+want.JTI, func() bool { return revoked(t, b, want.JTI, want.Sub) })
	}
	if listHas(b, stale) || revoked(t, a, "", stale.Sub) {
		t.Errorf("a revocation lifted at another sidecar after it was stored came back: in Redis %v, at the restarted sidecar %v",
			listHas(b, stale), revoked(t, a, "", stale.Sub))
	}
	// Later reloads do not offer them again: lift agent-7 and reload.
	if _, err := b.LiftSub(ctx, "agent-7"); err != nil {
		t.Fatal(err)
	}
	if err := a.Resync(ctx); err != nil {
		t.Fatal(err)
	}
	if listHas(b, state.Revocation{Sub: "agent-7"}) || revoked(t, a, "", "agent-7") {
		t.Error("a lift was undone by a later reload of the restarted sidecar")
	}
}
