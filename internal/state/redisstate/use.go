package redisstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/m1-agent/m1/internal/state"
)

// useScript records one use. KEYS[1] is the epoch key, KEYS[2] the use key;
// ARGV[1] the adopted epoch, ARGV[2] the token's iat in unix seconds, ARGV[3] the use limit, ARGV[4] the expiry in unix ms, ARGV[5]
// "once" for an approval. It returns 1 (recorded), 0 (used up), -1 (the
// epoch is missing or not the adopted one: nothing recorded) or -2 (the
// token was issued before the epoch).
var useScript = redis.NewScript(`
local e = redis.call('GET', KEYS[1])
if e ~= ARGV[1] then
  return -1
end
local iat = tonumber(ARGV[2])
if iat > 0 and iat < tonumber(e) then
  return -2
end
if ARGV[5] == 'once' then
  if redis.call('SET', KEYS[2], '1', 'NX', 'PXAT', ARGV[4]) then
    return 1
  end
  return 0
end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n >= tonumber(ARGV[3]) then
  return 0
end
redis.call('INCR', KEYS[2])
if n == 0 then
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
else
  redis.call('PEXPIREAT', KEYS[2], ARGV[4], 'GT')
end
return 1
`)

// addUsesScript adds uses counted locally during an outage. KEYS as
// useScript; ARGV[1] the adopted epoch, ARGV[2] the count, ARGV[3] the
// expiry in unix ms. It returns 1, or -1 when the epoch is not the adopted
// one.
var addUsesScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if redis.call('INCRBY', KEYS[2], ARGV[2]) == tonumber(ARGV[2]) then
  redis.call('PEXPIREAT', KEYS[2], ARGV[3])
else
  redis.call('PEXPIREAT', KEYS[2], ARGV[3], 'GT')
end
return 1
`)

// pendingUse is a use counted in the local fallback that Redis has not seen.
type pendingUse struct {
	n    int
	once bool
	exp  time.Time
}

// Use records one use of u.JTI (DESIGN §4, check 11) and reports whether
// it counted: an approval (MaxUses 1) once, a grant up to MaxUses times,
// each record expiring at u.Exp. The script that records it also checks,
// in the same atomic step, that the shared-state epoch is the one this
// process adopted and that the token was not issued before it (see the
// package documentation): a use that finds the state reset, or a token
// issued before the epoch, fails with an error wrapping ErrStateReset.
// When Redis is unreachable the error wraps ErrUnavailable, unless
// FallbackLocal counts the use in this process. It returns within
// Options.Timeout.
func (s *Store) Use(ctx context.Context, u state.Use) (bool, error) {
	if err := u.Validate(); err != nil {
		return false, err
	}
	return s.use(ctx, u.JTI, u.IssuedAt, u.MaxUses, u.Exp, u.MaxUses == 1)
}

func (s *Store) use(ctx context.Context, jti string, iat time.Time, limit int, exp time.Time, once bool) (bool, error) {
	if s.fallback != nil && time.Now().UnixNano() < s.retryAt.Load() {
		return s.useLocal(jti, iat, limit, exp, once)
	}
	tctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	ok, err := s.useShared(tctx, jti, iat, limit, exp, once)
	var u *unavailable
	if !errors.As(err, &u) {
		s.markUp()
		return ok, err
	}
	if ctx.Err() != nil { // the caller gave up: not an outage
		return false, err
	}
	s.markDown(err)
	if s.fallback == nil {
		return false, err
	}
	s.retryAt.Store(time.Now().Add(probeInterval).UnixNano())
	return s.useLocal(jti, iat, limit, exp, once)
}

// useShared records the use in Redis.
func (s *Store) useShared(ctx context.Context, jti string, iat time.Time, limit int, exp time.Time, once bool) (bool, error) {
	if s.pendingN.Load() > 0 {
		if ok, done, err := s.usePending(ctx, jti); done {
			return ok, err
		}
	}
	epoch := s.epoch.Load()
	if epoch == 0 {
		var err error
		if epoch, _, err = s.syncEpoch(ctx); err != nil {
			return false, err
		}
		s.kickReload()
	}
	iatArg := iat.Unix()
	mode := "count"
	if once {
		mode = "once"
	}
	keys := []string{s.epochKey, s.usePrefix + jti}
	expMs := max(exp.UnixMilli(), s.opts.Now().Add(time.Second).UnixMilli())
	for attempt := 0; ; attempt++ {
		res, err := call(ctx, s, func(ctx context.Context) (int64, error) {
			return useScript.Run(ctx, s.client, keys, epoch, iatArg, limit, expMs, mode).Int64()
		})
		switch {
		case err != nil:
			return false, &unavailable{"record use", err}
		case res == 1:
			return true, nil
		case res == 0:
			return false, nil
		case res == -2:
			return false, fmt.Errorf("%w: token issued at %s, epoch %s", state.ErrStateReset,
				iat.UTC().Format(time.RFC3339), time.Unix(epoch, 0).UTC().Format(time.RFC3339))
		}
		prev := epoch
		if epoch, _, err = s.syncEpoch(ctx); err != nil {
			return false, err
		}
		s.kickReload() // the revocations may be gone too: re-seed them
		if attempt > 0 {
			return false, fmt.Errorf("%w: epoch %s, was %s", state.ErrStateReset,
				time.Unix(epoch, 0).UTC().Format(time.RFC3339), time.Unix(prev, 0).UTC().Format(time.RFC3339))
		}
	}
}

// usePending handles a jti counted locally during an outage that Redis has
// not seen yet: an approval is used; a grant's local uses are added to
// Redis first. done reports whether the caller must return (ok, err).
func (s *Store) usePending(ctx context.Context, jti string) (ok, done bool, err error) {
	s.pmu.Lock()
	p := s.pending[jti]
	var cp pendingUse
	if p != nil {
		cp = *p
	}
	s.pmu.Unlock()
	switch {
	case p == nil:
		return false, false, nil
	case cp.once:
		return false, true, nil
	}
	if err := s.pushUse(ctx, jti, cp); err != nil {
		return false, true, err
	}
	return false, false, nil
}

// pushUse adds the local uses p of jti to Redis and forgets them.
func (s *Store) pushUse(ctx context.Context, jti string, p pendingUse) error {
	if p.exp.After(s.opts.Now()) {
		for attempt := 0; ; attempt++ {
			epoch := s.epoch.Load()
			res, err := call(ctx, s, func(ctx context.Context) (int64, error) {
				return addUsesScript.Run(ctx, s.client, []string{s.epochKey, s.usePrefix + jti}, epoch, p.n, p.exp.UnixMilli()).Int64()
			})
			if err != nil {
				return &unavailable{"add local uses", err}
			}
			if res == 1 {
				break
			}
			if _, _, err := s.syncEpoch(ctx); err != nil {
				return err
			}
			if attempt > 0 {
				return fmt.Errorf("%w: while adding local uses", state.ErrStateReset)
			}
		}
	}
	s.pmu.Lock()
	if q := s.pending[jti]; q != nil {
		if q.n -= p.n; q.n <= 0 {
			delete(s.pending, jti)
			s.pendingN.Add(-1)
		}
	}
	s.pmu.Unlock()
	return nil
}

// useLocal counts the use in the in-process fallback.
func (s *Store) useLocal(jti string, iat time.Time, limit int, exp time.Time, once bool) (bool, error) {
	if e := s.epoch.Load(); e != 0 && iat.Unix() < e {
		return false, fmt.Errorf("%w: token issued at %s, epoch %s", state.ErrStateReset,
			iat.UTC().Format(time.RFC3339), time.Unix(e, 0).UTC().Format(time.RFC3339))
	}
	ok, err := s.fallback.Use(context.Background(), state.Use{JTI: jti, IssuedAt: iat, Exp: exp, MaxUses: limit})
	if ok {
		s.pmu.Lock()
		p := s.pending[jti]
		if p == nil {
			p = &pendingUse{once: once}
			s.pending[jti] = p
			s.pendingN.Add(1)
		}
		p.n++
		if exp.After(p.exp) {
			p.exp = exp
		}
		s.pmu.Unlock()
	}
	return ok, err
}

// flushUses writes every use counted locally during an outage to Redis.
func (s *Store) flushUses(ctx context.Context) error {
	if s.pendingN.Load() == 0 {
		return nil
	}
	s.pmu.Lock()
	todo := make(map[string]pendingUse, len(s.pending))
	for jti, p := range s.pending {
		todo[jti] = *p
	}
	s.pmu.Unlock()
	for jti, p := range todo {
		if err := s.pushUse(ctx, jti, p); err != nil {
			return err
		}
	}
	return nil
}
