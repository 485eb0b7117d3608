package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/statetest"
)

func TestMemory(t *testing.T) {
	statetest.Run(t, statetest.Backend{
		New: func(t *testing.T, c *statetest.Clock) statetest.Store {
			return state.NewMemory(state.MemoryOptions{Now: c.Now})
		},
	})
}

func TestMemoryFailsClosedWhenFull(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	m := state.NewMemory(state.MemoryOptions{MaxEntries: 3, Now: func() time.Time { return now }})
	use := func(jti string) state.Use {
		return state.Use{JTI: jti, IssuedAt: now, Exp: now.Add(time.Minute), MaxUses: 1}
	}
	for _, j := range []string{"a", "b", "c"} {
		if ok, err := m.Use(ctx, use(j)); !ok || err != nil {
			t.Fatalf("Use(%s) = %v, %v", j, ok, err)
		}
	}
	if ok, err := m.Use(ctx, use("d")); ok || !errors.Is(err, state.ErrFull) {
		t.Fatalf("Use(d) on a full store = %v, %v; want false, ErrFull", ok, err)
	}
	if ok, err := m.Use(ctx, use("a")); ok || err != nil {
		t.Fatalf("Use(a) again on a full store = %v, %v; want false, nil (replay)", ok, err)
	}
}
