package redisstate

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// epochScript returns the epoch to adopt. KEYS[1] is the epoch key;
// ARGV[1] the epoch to set if needed, ARGV[2] the caller's adopted epoch
// (0 for none). A missing key, one that is not a plain integer (the use
// script compares it as a string with the adopted value), or one older
// than what the caller adopted (Redis restored from an old backup) is
// replaced by ARGV[1]; otherwise the stored epoch is kept. It returns the
// epoch and 1 when it set it, else 0: a peer may have set the very value
// this caller proposes, in the same second.
var epochScript = redis.NewScript(`
local raw = redis.call('GET', KEYS[1])
local v = raw and tonumber(raw)
if v and string.format('%d', v) == raw and v >= tonumber(ARGV[2]) then
  return {v, 0}
end
redis.call('SET', KEYS[1], ARGV[1])
return {tonumber(ARGV[1]), 1}
`)

// syncEpoch reads the epoch from Redis, setting a new one if it is missing
// or went backwards, and adopts it. It returns the adopted epoch and
// whether this call set it (Redis had lost its data, or never had any).
func (s *Store) syncEpoch(ctx context.Context) (epoch int64, set bool, err error) {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	prev := s.epoch.Load()
	candidate := max(s.opts.Now().Add(s.opts.EpochMargin).Unix()+1, prev+1)
	res, err := call(ctx, s, func(ctx context.Context) ([]int64, error) {
		return epochScript.Run(ctx, s.client, []string{s.epochKey}, candidate, prev).Int64Slice()
	})
	if err == nil && len(res) != 2 {
		err = fmt.Errorf("epoch script answered %v", res)
	}
	if err != nil {
		return prev, false, &unavailable{"sync epoch", err}
	}
	e, set := res[0], res[1] == 1
	if set {
		s.setEpoch.Store(true)
	}
	if e == prev {
		return e, set, nil
	}
	s.epoch.Store(e)
	switch {
	case prev == 0 && set:
		s.log.Warn("new shared state epoch (a new Redis, or one that lost its data): tokens issued before it are refused (state_reset)",
			zap.Time(fieldEpoch, time.Unix(e, 0)))
	case prev == 0:
		s.log.Info("shared state epoch adopted", zap.Time(fieldEpoch, time.Unix(e, 0)))
	default:
		s.log.Warn("shared state epoch changed (Redis lost its data?): tokens issued before the new epoch are refused",
			zap.Time(fieldEpoch, time.Unix(e, 0)), zap.Time(fieldPrevious, time.Unix(prev, 0)))
	}
	return e, set, nil
}
