package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/store/sqlite"
)

// seedAge is how old the state epoch of a seeded store or Redis is.
const seedAge = time.Hour

// SeedDataDir creates the SQLite store under dir (M1_DATA_DIR) with a state
// epoch an hour old, as on a sidecar that has been running for an hour, so
// that tokens issued from now on are accepted. A new data directory starts
// a new epoch at its creation plus the clock skew and refuses (state_reset)
// the tokens issued before it (DESIGN §7).
func SeedDataDir(ctx context.Context, dir string) error {
	s, err := sqlite.Open(ctx, filepath.Join(dir, "m1.db"), sqlite.DefaultOptions())
	if err != nil {
		return fmt.Errorf("seed data directory: %w", err)
	}
	defer s.Close()
	if _, err := s.StateEpoch(ctx, time.Now().Add(-seedAge)); err != nil {
		return fmt.Errorf("seed data directory: %w", err)
	}
	return nil
}

// SeedRedis sets the shared-state epoch of an empty Redis (url) an hour
// back, as SeedDataDir does for the store: the sidecars that start on it
// adopt it instead of setting a new one, which would refuse the tokens
// issued before it.
func SeedRedis(ctx context.Context, url string) error {
	o, err := redis.ParseURL(url)
	if err != nil {
		return fmt.Errorf("seed redis: %w", err)
	}
	c := redis.NewClient(o)
	defer c.Close()
	epoch := strconv.FormatInt(time.Now().Add(-seedAge).Unix(), 10)
	if err := c.SetNX(ctx, "{m1}:epoch", epoch, 0).Err(); err != nil {
		return fmt.Errorf("seed redis: %w", err)
	}
	return nil
}
