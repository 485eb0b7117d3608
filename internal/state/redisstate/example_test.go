package redisstate_test

import (
	"context"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
)

// A sidecar's wiring: make first contact before serving, keep the store
// subscribed, and resync when the connection comes back.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:                 []string{"127.0.0.1:6379"},
		ContextTimeoutEnabled: true,
	})
	o := redisstate.DefaultOptions()
	o.EpochMargin = 30 * time.Second // M1_CLOCK_SKEW
	o.OnInvalidate = func(ev redisstate.Event) { /* purge the L1 decision cache */ }
	store, err := redisstate.New(client, o)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Resync(ctx); err != nil {
		log.Printf("shared state not reachable yet: %v", err) // Start keeps trying
	}
	go func() { _ = store.Start(ctx) }()

	// On the decision path (after the policy allowed the call), with the
	// token's claims:
	iat, exp := time.Now(), time.Now().Add(5*time.Minute)
	first, err := store.Use(ctx, state.Use{JTI: "jti-123", IssuedAt: iat, Exp: exp, MaxUses: 1})
	_, _ = first, err // err wrapping ErrStateReset → state_reset; other errors → state_unavailable
}
