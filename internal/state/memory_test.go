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
	statetest.Run(t, func(t *testing.T, c *statetest.Clock) statetest.Store {
		return state.NewMemory(state.MemoryOptions{Now: c.Now})
	})
}

func TestMemoryFailsClosedWhenFull(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	m := state.NewMemory(state.MemoryOptions{MaxEntries: 3, Now: func() time.Time { return now }})
	exp := now.Add(time.Minute)
	for _, j := range []string{"a", "b", "c"} {
		if ok, err := m.Consume(ctx, j, exp); !ok || err != nil {
			t.Fatalf("Consume(%s) = %v, %v", j, ok, err)
		}
	}
	if ok, err := m.Consume(ctx, "d", exp); ok || !errors.Is(err, state.ErrFull) {
		t.Fatalf("Consume(d) on a full store = %v, %v; want false, ErrFull", ok, err)
	}
	if ok, err := m.Consume(ctx, "a", exp); ok || err != nil {
		t.Fatalf("Consume(a) again on a full store = %v, %v; want false, nil (replay)", ok, err)
	}
}
