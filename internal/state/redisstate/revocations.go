package redisstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/state"
)

// pruneLua defines prune(key, now): it deletes the revocations whose until
// (unix ms, 0 = none) is past.
const pruneLua = `
local function prune(key, now)
  local all = redis.call('HGETALL', key)
  local kept = {}
  for i = 1, #all, 2 do
    local u = tonumber(all[i+1])
    if u == nil or (u ~= 0 and u <= now) then
      redis.call('HDEL', key, all[i])
    else
      kept[#kept+1] = all[i]
      kept[#kept+1] = all[i+1]
    end
  end
  return kept
end
`

// revocationsScript writes revocations, prunes the expired ones and
// optionally returns the rest. KEYS[1] is the revocation hash; ARGV[1] now
// in unix ms, ARGV[2] the channel, ARGV[3] "1" to return the hash's fields
// and values; then groups of four: "set" (HSET) or "nx" (HSETNX), the
// field, the until, and the event to publish when the field was written.
var revocationsScript = redis.NewScript(pruneLua + `
for i = 4, #ARGV, 4 do
  local written = 1
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[i+1], ARGV[i+2])
  else
    written = redis.call('HSETNX', KEYS[1], ARGV[i+1], ARGV[i+2])
  end
  if written == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[i+3])
  end
end
local kept = prune(KEYS[1], tonumber(ARGV[1]))
if ARGV[3] == '1' then
  return kept
end
return {}
`)

// liftScript removes a revocation, notes when it was lifted, and
// publishes the lift. KEYS[1] is the revocation hash, KEYS[2] the lifted
// hash; ARGV[1] the field, ARGV[2] now in unix ms, ARGV[3] the channel,
// ARGV[4] the event. It returns 1 if a revocation was in force.
var liftScript = redis.NewScript(pruneLua + `
local v = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
prune(KEYS[1], tonumber(ARGV[2]))
if v then
  local u = tonumber(v)
  if u == 0 or (u ~= nil and u > tonumber(ARGV[2])) then
    return 1
  end
end
return 0
`)

// revocationSet is the process's copy of the revocations, answering
// Revoked without a round trip. It is kept in step by events (pub/sub and
// this process's own calls) and replaced by reloads.
type revocationSet struct {
	mu      sync.RWMutex
	jtis    map[string]int64 // jti → until, unix ms, 0 = none
	subs    map[string]int64
	sweepAt int
	pending map[string]int64 // field → until: revocations applied here that Redis has not stored
	// While a reload is in flight, changes are also recorded here and
	// replayed onto its snapshot, which may predate them.
	loading bool
	replay  []Event
	// This process's changes applied here whose Redis write has not
	// finished: a reload that starts meanwhile replays them too, since its
	// snapshot may predate the write.
	inflight map[uint64]Event
	seq      uint64
}

func (r *revocationSet) init() {
	r.jtis, r.subs, r.pending, r.sweepAt = map[string]int64{}, map[string]int64{}, map[string]int64{}, 1024
	r.inflight = map[uint64]Event{}
}

// field is the hash field of a revocation event.
func (ev Event) field() string {
	if ev.JTI != "" {
		return "jti:" + ev.JTI
	}
	return "sub:" + ev.Sub
}

func inForce(until, now int64) bool { return until == 0 || until > now }

// applyLocal applies a change made by this process, which is about to
// write it to Redis; call done with the id when the write has finished.
func (r *revocationSet) applyLocal(ev Event, now int64) (id uint64) {
	r.mu.Lock()
	r.seq++
	id = r.seq
	r.inflight[id] = ev
	r.mu.Unlock()
	r.apply(ev, now)
	return id
}

func (r *revocationSet) done(id uint64) {
	r.mu.Lock()
	delete(r.inflight, id)
	r.mu.Unlock()
}

// apply applies a revoke or lift event.
func (r *revocationSet) apply(ev Event, now int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applyLocked(ev)
	if r.loading {
		r.replay = append(r.replay, ev)
	}
	if len(r.jtis)+len(r.subs) >= r.sweepAt {
		for k, u := range r.jtis {
			if !inForce(u, now) {
				delete(r.jtis, k)
			}
		}
		for k, u := range r.subs {
			if !inForce(u, now) {
				delete(r.subs, k)
			}
		}
		r.sweepAt = max(1024, 2*(len(r.jtis)+len(r.subs)))
	}
}

func (r *revocationSet) applyLocked(ev Event) {
	switch ev.Type {
	case EventRevoke:
		if ev.JTI != "" {
			r.jtis[ev.JTI] = ev.Until
		} else if ev.Sub != "" {
			r.subs[ev.Sub] = ev.Until
		}
	case EventLift:
		if ev.JTI != "" {
			delete(r.jtis, ev.JTI)
		}
		if ev.Sub != "" {
			delete(r.subs, ev.Sub)
		}
	}
}

func (r *revocationSet) revoked(jti, sub string, now int64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if u, ok := r.jtis[jti]; ok && jti != "" && inForce(u, now) {
		return true
	}
	if u, ok := r.subs[sub]; ok && sub != "" && inForce(u, now) {
		return true
	}
	return false
}

// subInForce reports whether sub's revocation is in force here.
func (r *revocationSet) subInForce(sub string, now int64) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	u, ok := r.subs[sub]
	return ok && inForce(u, now)
}

func (r *revocationSet) setPending(field string, until int64) {
	r.mu.Lock()
	r.pending[field] = until
	r.mu.Unlock()
}

func (r *revocationSet) dropPending(field string) {
	r.mu.Lock()
	delete(r.pending, field)
	r.mu.Unlock()
}

// begin starts a reload: it returns the pending revocations and, when all
// is set, every revocation in force.
func (r *revocationSet) begin(all bool, now int64) (pending, current map[string]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loading, r.replay = true, nil
	for _, id := range slices.Sorted(maps.Keys(r.inflight)) {
		r.replay = append(r.replay, r.inflight[id])
	}
	pending = maps.Clone(r.pending)
	if all {
		current = map[string]int64{}
		for k, u := range r.jtis {
			if inForce(u, now) {
				current["jti:"+k] = u
			}
		}
		for k, u := range r.subs {
			if inForce(u, now) {
				current["sub:"+k] = u
			}
		}
	}
	return pending, current
}

// finish replaces the set with snapshot (flat field, until pairs), drops
// the pending revocations that were stored, keeps the others, and replays
// what changed during the reload.
func (r *revocationSet) finish(snapshot []string, stored map[string]int64, now int64) int {
	jtis, subs := map[string]int64{}, map[string]int64{}
	put := func(field string, until int64) {
		if !inForce(until, now) {
			return
		}
		if id, ok := strings.CutPrefix(field, "jti:"); ok {
			jtis[id] = until
		} else if id, ok := strings.CutPrefix(field, "sub:"); ok {
			subs[id] = until
		}
	}
	for i := 0; i+1 < len(snapshot); i += 2 {
		until, err := strconv.ParseInt(snapshot[i+1], 10, 64)
		if err != nil {
			continue
		}
		put(snapshot[i], until)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for field, until := range stored {
		if u, ok := r.pending[field]; ok && u == until {
			delete(r.pending, field)
		}
	}
	for field, until := range r.pending {
		put(field, until)
	}
	r.jtis, r.subs = jtis, subs
	for _, ev := range r.replay {
		r.applyLocked(ev)
	}
	r.loading, r.replay = false, nil
	r.sweepAt = max(1024, 2*(len(jtis)+len(subs)))
	return len(r.jtis) + len(r.subs)
}

// abort ends a failed reload, keeping the set as it is.
func (r *revocationSet) abort() {
	r.mu.Lock()
	r.loading, r.replay = false, nil
	r.mu.Unlock()
}

func untilMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return max(t.UnixMilli(), 1)
}

func (s *Store) nowMs() int64 { return s.opts.Now().UnixMilli() }

func (s *Store) payload(ev Event) string {
	ev.Origin = s.id
	b, _ := json.Marshal(ev)
	return string(b)
}

// Revoke applies r in this process at once, then stores it in Redis
// (expiring at r.Until) and publishes it to the other processes. When Redis
// is unreachable it returns an error wrapping ErrUnavailable; the
// revocation still applies here, and is stored and published when Redis is
// back (Resync, or Start's reload).
func (s *Store) Revoke(ctx context.Context, r state.Revocation) error {
	if err := r.Validate(); err != nil {
		return err
	}
	ev := Event{Type: EventRevoke, JTI: r.JTI, Sub: r.Sub, Until: untilMs(r.Until)}
	f := ev.field()
	defer s.revs.done(s.revs.applyLocal(ev, s.nowMs()))
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	_, err := call(ctx, s, func(ctx context.Context) (any, error) {
		return nil, revocationsScript.Run(ctx, s.client, []string{s.revKey},
			s.nowMs(), s.opts.Channel, "0", "set", f, ev.Until, s.payload(ev)).Err()
	})
	if err != nil {
		s.revs.setPending(f, ev.Until)
		return &unavailable{"store revocation " + f, err}
	}
	s.revs.dropPending(f)
	return nil
}

// LiftSub removes sub's revocation here and in Redis, and publishes the
// lift; it reports whether a revocation was in force (here or in Redis).
// When Redis is unreachable it returns an error wrapping ErrUnavailable:
// the lift applies here only, and is undone by the next reload if Redis
// still holds the revocation (retry the lift).
func (s *Store) LiftSub(ctx context.Context, sub string) (bool, error) {
	ev := Event{Type: EventLift, Sub: sub}
	f := ev.field()
	now := s.nowMs()
	local := s.revs.subInForce(sub, now)
	s.revs.dropPending(f)
	defer s.revs.done(s.revs.applyLocal(ev, now))
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	n, err := call(ctx, s, func(ctx context.Context) (int64, error) {
		return liftScript.Run(ctx, s.client, []string{s.revKey, s.liftedKey}, f, now, s.opts.Channel, s.payload(ev)).Int64()
	})
	if err != nil {
		return local, &unavailable{"lift revocation " + f, err}
	}
	return local || n == 1, nil
}

// Restore applies, in this process only, revocations read from the durable
// store at start (before Resync, or later when the store answered late).
// The next reload offers them to Redis:
// each is stored there unless Redis holds it already or another sidecar
// lifted it after it was stored (the lifted hash; Stored), so that one
// stored while Redis was unreachable, or before Redis lost its data and
// another sidecar set the new epoch, is not forgotten. The reload then
// replaces the set with Redis's; when it (or any later one) finds a new
// epoch itself, every revocation in force here is written back.
func (s *Store) Restore(rs []state.Revocation) {
	now := s.nowMs()
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	for _, r := range rs {
		if r.Validate() != nil {
			continue
		}
		s.revs.apply(Event{Type: EventRevoke, JTI: r.JTI, Sub: r.Sub, Until: untilMs(r.Until)}, now)
		s.restored = append(s.restored, r)
	}
}

// Revoked reports whether the token jti or the subject sub is revoked,
// from this process's copy of the revocations (no round trip). It never
// returns an error: while Redis is unreachable the last-known set answers.
func (s *Store) Revoked(_ context.Context, jti, sub string) (bool, error) {
	return s.revs.revoked(jti, sub, s.nowMs()), nil
}

// List returns the revocations in force, read from Redis, jtis first, each
// group sorted. It fails with an error wrapping ErrUnavailable when Redis is
// unreachable.
func (s *Store) List(ctx context.Context) ([]state.Revocation, error) {
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	pairs, err := call(ctx, s, func(ctx context.Context) ([]string, error) {
		return revocationsScript.Run(ctx, s.client, []string{s.revKey}, s.nowMs(), s.opts.Channel, "1").StringSlice()
	})
	if err != nil {
		return nil, &unavailable{"list revocations", err}
	}
	var out []state.Revocation
	for i := 0; i+1 < len(pairs); i += 2 {
		u, err := strconv.ParseInt(pairs[i+1], 10, 64)
		if err != nil {
			continue
		}
		var r state.Revocation
		if u != 0 {
			r.Until = time.UnixMilli(u)
		}
		if id, ok := strings.CutPrefix(pairs[i], "jti:"); ok {
			r.JTI = id
		} else if id, ok := strings.CutPrefix(pairs[i], "sub:"); ok {
			r.Sub = id
		} else {
			continue
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b state.Revocation) int {
		if c := strings.Compare(a.Sub, b.Sub); c != 0 { // jtis (empty sub) first
			return c
		}
		return strings.Compare(a.JTI, b.JTI)
	})
	return out, nil
}

// reloadScript is revocationsScript for a reload, atomically with the
// epoch: KEYS[1] is the revocation hash, KEYS[2] the epoch key, KEYS[3]
// the lifted hash; ARGV[1] now in unix ms, ARGV[2] the channel, ARGV[3]
// the adopted epoch; then groups of five: "set", "nx" or "restore", the
// field, the until, the event to publish when the field was written, and
// (restore) when the durable store recorded it, unix ms. A restore is an
// nx unless the lifted hash says the field was lifted at or after that. It
// returns {"epoch"} without writing anything when the epoch key is not the
// adopted epoch (Redis lost its data since the epoch was read), else "ok"
// followed by the hash's fields and values.
var reloadScript = redis.NewScript(pruneLua + `
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {'epoch'}
end
for i = 4, #ARGV, 5 do
  local written = 1
  if ARGV[i] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[i+1], ARGV[i+2])
  elseif ARGV[i] == 'nx' or tonumber(redis.call('HGET', KEYS[3], ARGV[i+1]) or '-1') < tonumber(ARGV[i+4]) then
    written = redis.call('HSETNX', KEYS[1], ARGV[i+1], ARGV[i+2])
  else
    written = 0
  end
  if written == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[i+3])
  end
end
local kept = prune(KEYS[1], tonumber(ARGV[1]))
table.insert(kept, 1, 'ok')
return kept
`)

// reload syncs the epoch, stores the revocations that only this process
// holds (those Redis failed to store; after a reset, all of them, since
// Redis lost its copy), and replaces the set with Redis's. The snapshot is
// taken atomically with a check of the epoch, so that a loss between the
// two is seen as a reset, never as an empty set to adopt.
func (s *Store) reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	for attempt := 0; ; attempt++ {
		done, err := s.reloadOnce(ctx)
		if done || err != nil {
			return err
		}
		if attempt == 2 {
			return &unavailable{"reload revocations", errors.New("the epoch changed during every attempt")}
		}
	}
}

// reloadOnce is one reload attempt; done is false when the epoch changed
// before the snapshot (nothing was written or replaced). reloadMu is held.
func (s *Store) reloadOnce(ctx context.Context) (done bool, err error) {
	epoch, _, err := s.syncEpoch(ctx)
	if err != nil {
		return false, err
	}
	// A new epoch that this process found (Redis lost its data since the
	// last reload, or before this process's first contact) means Redis lost
	// the revocations too: write back every one in force here, those
	// restored from the durable store included.
	set := s.setEpoch.Swap(false)
	reset := set || (s.loaded != 0 && epoch != s.loaded)
	now := s.nowMs()
	pending, current := s.revs.begin(reset, now)
	args := []any{now, s.opts.Channel, epoch}
	for f, u := range current {
		if _, ok := pending[f]; !ok {
			args = append(args, "nx", f, u, s.payload(eventOf(f, u)), 0)
		}
	}
	for f, u := range pending {
		args = append(args, "set", f, u, s.payload(eventOf(f, u)), 0)
	}
	if !reset { // else current holds them
		for _, r := range s.restored {
			ev := Event{Type: EventRevoke, JTI: r.JTI, Sub: r.Sub, Until: untilMs(r.Until)}
			f := ev.field()
			if _, ok := pending[f]; !ok && inForce(ev.Until, now) {
				stored := r.Stored
				if stored.IsZero() { // not known: offer it as if stored now
					stored = time.UnixMilli(now)
				}
				args = append(args, "restore", f, ev.Until, s.payload(ev), stored.UnixMilli())
			}
		}
	}
	res, err := call(ctx, s, func(ctx context.Context) ([]string, error) {
		return reloadScript.Run(ctx, s.client, []string{s.revKey, s.epochKey, s.liftedKey}, args...).StringSlice()
	})
	if err != nil {
		s.revs.abort()
		if set {
			s.setEpoch.Store(true) // still to be written back
		}
		return false, &unavailable{"reload revocations", err}
	}
	if len(res) == 0 || res[0] != "ok" {
		s.revs.abort()
		if set {
			s.setEpoch.Store(true)
		}
		return false, nil
	}
	snapshot := res[1:]
	n := s.revs.finish(snapshot, pending, s.nowMs())
	s.loaded, s.restored = epoch, nil
	fields := []zap.Field{zap.Int(fieldCount, n), zap.Time(fieldEpoch, time.Unix(epoch, 0))}
	if reset {
		s.log.Warn("revocations re-stored in Redis after a shared-state reset", append(fields, zap.Int(fieldRestored, len(current)))...)
	} else {
		s.log.Debug("revocations reloaded", fields...)
	}
	return true, nil
}

// eventOf is the revoke event of a hash field.
func eventOf(field string, until int64) Event {
	ev := Event{Type: EventRevoke, Until: until}
	if id, ok := strings.CutPrefix(field, "jti:"); ok {
		ev.JTI = id
	} else {
		ev.Sub, _ = strings.CutPrefix(field, "sub:")
	}
	return ev
}

// Resync reloads the revocation set from Redis (storing what only this
// process holds), checks the epoch and writes the uses counted locally
// during an outage. Call it before serving and whenever the connection
// comes back; Start also does it on every (re)subscribe.
func (s *Store) Resync(ctx context.Context) error {
	if err := s.reload(ctx); err != nil {
		return fmt.Errorf("resync shared state: %w", err)
	}
	if err := s.flushUses(ctx); err != nil {
		return fmt.Errorf("resync shared state: %w", err)
	}
	s.markUp()
	return nil
}
