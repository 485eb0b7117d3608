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

// testTimeout is the stores' Timeout; slack is what a loaded CI machine
// may add to it. Both are far below the test clients' 10s socket timeouts.
const (
	testTimeout = 500 * time.Millisecond
	slack       = 1500 * time.Millisecond
)

// Redis unreachable, default mode: uses fail closed within the timeout,
// whether the server is gone (connection refused) or hangs (no answer), and
// whether or not the client honours context deadlines itself. When Redis
// answers again the same store works.
func TestFailClosed(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name        string
		stall       bool
		ctxTimeouts bool
	}{
		{"stopped", false, true},
		{"stopped, client ignores deadlines", false, false},
		{"hanging", true, true},
		{"hanging, client ignores deadlines", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := testenv.StartRedis(t, testenv.RedisOptions{Persist: true})
			px := startProxy(t, r.Addr)
			s := newStore(t, newClient(t, px.Addr(), tt.ctxTimeouts), redisstate.Options{Prefix: uniquePrefix(), Timeout: testTimeout})
			start(t, s)
			exp := time.Now().Add(time.Minute)
			if ok, err := consume(ctx, s, "before", exp); !ok || err != nil {
				t.Fatalf("Consume while up = %v, %v", ok, err)
			}
			if tt.stall {
				px.set(modeStall)
			} else {
				r.Stop(t)
			}
			for _, use := range []struct {
				name string
				f    func() (bool, error)
			}{
				{"Consume", func() (bool, error) { return consume(ctx, s, "during", exp) }},
				{"CountUse", func() (bool, error) { return count(ctx, s, "grant", 3, exp) }},
				{"ConsumeIssued", func() (bool, error) { return consumeIssued(ctx, s, "during2", issuedNow(), exp) }},
			} {
				t0 := time.Now()
				ok, err := use.f()
				took := time.Since(t0)
				if ok || !errors.Is(err, state.ErrUnavailable) || errors.Is(err, state.ErrStateReset) {
					t.Errorf("%s while down = %v, %v; want false, ErrUnavailable", use.name, ok, err)
				}
				// A bound, not a speed goal: the deadline must hold.
				if took > testTimeout+slack {
					t.Errorf("%s while down took %v, want about the %v timeout", use.name, took, testTimeout)
				}
			}
			if got := revoked(t, s, "x", "y"); got {
				t.Errorf("Revoked while down = true")
			}
			if tt.stall {
				px.set(modeCut) // drop the hung connections
				px.set(modePass)
			} else {
				r.Start(t)
			}
			testenv.Eventually(t, 10*time.Second, "Consume works again after Redis is back", func() bool {
				ok, err := consume(ctx, s, "after", exp)
				return ok && err == nil
			})
			if ok, err := consume(ctx, s, "before", exp); ok || err != nil {
				t.Errorf("Consume(before) after recovery = %v, %v; want false (data kept)", ok, err)
			}
		})
	}
}

// M1_REPLAY_FALLBACK=local: while Redis is down uses are counted in the
// process; when it is back they are written to Redis, so the token stays
// used mesh-wide.
func TestFallbackLocal(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{Persist: true})
	prefix := uniquePrefix()
	a := newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: prefix, Fallback: redisstate.FallbackLocal, Timeout: testTimeout})
	start(t, a)
	other := newStore(t, newClient(t, r.Addr, true), redisstate.Options{Prefix: prefix})
	exp := time.Now().Add(time.Minute)

	r.Stop(t)
	for _, tt := range []struct {
		name    string
		f       func() (bool, error)
		want    bool
		wantErr error
	}{
		{"Consume(j)", func() (bool, error) { return consume(ctx, a, "j", exp) }, true, nil},
		{"Consume(j) again", func() (bool, error) { return consume(ctx, a, "j", exp) }, false, nil},
		{"CountUse(g) 1/2", func() (bool, error) { return count(ctx, a, "g", 2, exp) }, true, nil},
		{"CountUse(g) 2/2", func() (bool, error) { return count(ctx, a, "g", 2, exp) }, true, nil},
		{"CountUse(g) 3/2", func() (bool, error) { return count(ctx, a, "g", 2, exp) }, false, nil},
		{"ConsumeIssued(issued before the epoch)", func() (bool, error) {
			return consumeIssued(ctx, a, "old", a.Epoch().Add(-time.Hour), exp)
		}, false, state.ErrStateReset},
	} {
		t0 := time.Now()
		ok, err := tt.f()
		if ok != tt.want || (tt.wantErr == nil && err != nil) || !errors.Is(err, tt.wantErr) {
			t.Errorf("%s while down = %v, %v; want %v, %v", tt.name, ok, err, tt.want, tt.wantErr)
		}
		if took := time.Since(t0); took > testTimeout+slack {
			t.Errorf("%s while down took %v", tt.name, took)
		}
	}

	r.Start(t)
	probes := 0
	testenv.Eventually(t, 10*time.Second, "a uses Redis again", func() bool {
		probes++
		probe := "probe-" + strconv.Itoa(probes)
		if ok, err := consume(ctx, other, probe, exp); err != nil || !ok {
			return false
		}
		ok, err := consume(ctx, a, probe, exp)
		return err == nil && !ok // answered by Redis, not the local fallback
	})
	for _, tt := range []struct {
		name string
		f    func() (bool, error)
	}{
		{"a: Consume(j)", func() (bool, error) { return consume(ctx, a, "j", exp) }},
		{"a: CountUse(g)", func() (bool, error) { return count(ctx, a, "g", 2, exp) }},
	} {
		if ok, err := tt.f(); ok || err != nil {
			t.Errorf("%s after recovery = %v, %v; want false (used during the outage)", tt.name, ok, err)
		}
	}
	// The local uses reach Redis, so the other sidecar refuses them too.
	testenv.Eventually(t, 10*time.Second, "uses counted during the outage reach Redis", func() bool {
		ok, err := consume(ctx, other, "j", exp)
		return err == nil && !ok
	})
	if ok, err := count(ctx, other, "g", 2, exp); ok || err != nil {
		t.Errorf("other: CountUse(g) after recovery = %v, %v; want false", ok, err)
	}
}

// Revoke and LiftSub while Redis is down take effect here and report
// ErrUnavailable; the revocation reaches Redis and the other sidecars when
// Redis is back.
func TestRevokeWhileDown(t *testing.T) {
	ctx := context.Background()
	r := testenv.StartRedis(t, testenv.RedisOptions{Persist: true})
	a, b, _ := pair(t, r.Addr, r.Addr)
	if err := a.Revoke(ctx, state.Revocation{Sub: "to-lift"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "b sees to-lift", func() bool { return revoked(t, b, "", "to-lift") })

	r.Stop(t)
	rev := state.Revocation{JTI: "while-down", Until: time.Now().Add(time.Hour)}
	if err := a.Revoke(ctx, rev); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("Revoke while down = %v, want ErrUnavailable", err)
	}
	if !revoked(t, a, rev.JTI, "") {
		t.Errorf("Revoke while down did not apply locally")
	}
	if _, err := a.List(ctx); !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("List while down = %v, want ErrUnavailable", err)
	}
	lifted, err := b.LiftSub(ctx, "to-lift")
	if !lifted || !errors.Is(err, state.ErrUnavailable) {
		t.Errorf("LiftSub while down = %v, %v; want true (locally), ErrUnavailable", lifted, err)
	}
	if revoked(t, b, "", "to-lift") {
		t.Errorf("LiftSub while down did not apply locally")
	}

	r.Start(t)
	testenv.Eventually(t, 10*time.Second, "the revocation made while down reaches Redis and b", func() bool {
		return listHas(a, rev) && revoked(t, b, rev.JTI, "")
	})
	// The lift was not stored: Redis still holds the revocation, and b's
	// reload restores it (fail safe; the operator retries the lift).
	testenv.Eventually(t, 10*time.Second, "b's reload restores to-lift", func() bool { return revoked(t, b, "", "to-lift") })
	if lifted, err := b.LiftSub(ctx, "to-lift"); !lifted || err != nil {
		t.Fatalf("LiftSub after recovery = %v, %v; want true", lifted, err)
	}
	testenv.Eventually(t, 10*time.Second, "the lift reaches a", func() bool { return !revoked(t, a, "", "to-lift") })
}
