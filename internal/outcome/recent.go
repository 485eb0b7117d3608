package outcome

import (
	"hash/maphash"
	"sync"
	"time"
)

// recent remembers values by decision id for a TTL, about size of them at
// most: the decisions waiting for their access-log entries. set runs on the
// decision path of every check, so it is a map insert under one of
// recentShards locks. (otter's Set, with its expiry wheel and eviction
// policy, cost ~2µs a check under load, a quarter of a cached check; a
// decision id is looked up once and needs no policy beyond oldest first.)
//
// Each shard keeps two generations: new ids go to cur; when cur is older
// than the TTL, or holds its share of size/2, it becomes prev and the old
// prev is dropped. An id is kept until the TTL has passed or its shard has
// taken size/(2·recentShards) ids after it, whichever comes first.
type recent[V any] struct {
	ttl    time.Duration
	perGen int // ids in one generation of one shard
	now    func() time.Time
	seed   maphash.Seed
	shards [recentShards]recentShard[V]
}

const recentShards = 32

type recentShard[V any] struct {
	mu        sync.Mutex
	cur, prev map[string]recentEntry[V]
	curStart  time.Time
}

type recentEntry[V any] struct {
	v     V
	at    time.Time
	taken bool
}

func newRecent[V any](size int, ttl time.Duration, now func() time.Time) *recent[V] {
	r := &recent[V]{ttl: ttl, perGen: max(1, size/(2*recentShards)), now: now, seed: maphash.MakeSeed()}
	start := now()
	for i := range r.shards {
		r.shards[i].cur, r.shards[i].curStart = map[string]recentEntry[V]{}, start
	}
	return r
}

func (r *recent[V]) shard(id string) *recentShard[V] {
	return &r.shards[maphash.String(r.seed, id)%recentShards]
}

// set remembers v under id.
func (r *recent[V]) set(id string, v V) {
	now := r.now()
	s := r.shard(id)
	s.mu.Lock()
	if len(s.cur) >= r.perGen || now.Sub(s.curStart) >= r.ttl {
		s.prev, s.cur, s.curStart = s.cur, make(map[string]recentEntry[V], len(s.cur)), now
	}
	s.cur[id] = recentEntry[V]{v: v, at: now}
	s.mu.Unlock()
}

// get returns the value under id, if it is remembered and younger than
// the TTL. With take, it also marks it taken; taken reports whether it
// had been taken before.
func (r *recent[V]) get(id string, take bool) (v V, ok, taken bool) {
	now := r.now()
	s := r.shard(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range [2]map[string]recentEntry[V]{s.cur, s.prev} {
		e, found := m[id]
		if !found {
			continue
		}
		if now.Sub(e.at) >= r.ttl {
			return v, false, false
		}
		if take && !e.taken {
			e.taken = true
			m[id] = e
			return e.v, true, false
		}
		return e.v, true, e.taken
	}
	return v, false, false
}
