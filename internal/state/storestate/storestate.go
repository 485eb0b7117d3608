// Package storestate keeps the sidecar's security state in M1's store
// (store.State: the SQLite file under M1_DATA_DIR, or PostgreSQL), so that
// without Redis the promises of DESIGN §7 hold across a restart: a
// restarted sidecar refuses a replayed approval and goes on counting a
// grant's uses, and remembers every revocation.
//
// # Uses
//
// The store is the authority on uses: Use returns only after the use was
// committed (durable) in a transaction that also checked the store's state
// epoch. Uses are group-committed: those that arrive while a commit is in
// flight are recorded together in the next one, so that under load many
// uses share one commit (one fsync with SQLite). A commit that follows one
// of many uses (Options.LingerAfter checks: the sidecar is busy) also
// lingers a moment (Options.Linger) for more to join it; a lone use, or a
// few, never wait.
//
// With Options.Reserve, a grant in quick use takes its uses from the store
// in blocks: one commit counts a block of uses (at most Reserve, at most a
// tenth of the grant's max_uses, doubling while blocks are refilled within
// a second of each other), handed out from memory and refilled in the
// background when half used. The store's count is never below the uses
// allowed, so max_uses holds across restarts; a restart forfeits what is
// left of each block (at most one and a half blocks). Set it only when
// this process alone counts the store's uses (SQLite): a peer could not
// use another's block.
//
// Since the count is kept in the database, sidecars sharing one PostgreSQL
// database count every sidecar's uses. Approvals known to be used up
// (loaded at start, or refused since) are answered from memory.
//
// # Fencing
//
// A new store has no epoch: the first process that opens it sets one, the
// next whole second after now + EpochMargin (M1_CLOCK_SKEW), exactly as
// the Redis store does on an empty Redis, and a token issued before the
// epoch is refused (state.ErrStateReset, state_reset): a new data directory
// may belong to a pod whose earlier state was lost, so tokens issued before
// it could have been used already. A store whose state tables are emptied
// while the sidecar runs is noticed at the next use (store.ErrEpochChanged):
// a new epoch is set, the use is refused, and the revocations held in the
// process are written back. As with Redis, a store restored from an older
// copy of itself (a backup of the same store) keeps its epoch and is not
// detected: restore a backup only into a stopped sidecar's data directory
// with its state_epoch row deleted.
//
// # Revocations
//
// Revocations (its own, or around the Redis store) writes every revocation
// and lift to revoked_tokens before it applies it, and restores them at
// start.
package storestate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/store"
)

// Options configure a Store. Zero fields take DefaultOptions' values,
// except EpochMargin, whose zero means none.
type Options struct {
	// EpochMargin is added to the clock when a new epoch is set: tokens
	// issued up to the margin after it (by the issuer's clock) are refused
	// too. Set it to M1_CLOCK_SKEW.
	EpochMargin time.Duration
	// Timeout bounds how long a use waits for its commit; the use fails
	// with state.ErrUnavailable after it (it may still be recorded).
	Timeout time.Duration
	// MaxBatch bounds the uses one transaction records.
	MaxBatch int
	// Linger is how long a commit that follows a commit of the uses of
	// LingerAfter checks or more waits for more uses to join it (a full
	// batch ends the wait): under load the cost of a transaction and its
	// fsync, ~200µs of CPU with SQLite, is shared by more uses. Negative:
	// no wait.
	Linger time.Duration
	// LingerAfter is how many checks the last commit must have recorded
	// for the next to linger: with fewer, the sidecar is not busy and a
	// linger only delays the checks already waiting.
	LingerAfter int
	// Reserve is the largest block of a grant's uses one commit counts
	// (see the package doc); 0 or 1: every use is its own.
	Reserve int
	// Now is the clock.
	Now func() time.Time
	// Logger receives epoch and outage messages.
	Logger *zap.Logger
}

// DefaultOptions returns the defaults: no epoch margin, a 1s timeout,
// batches of at most 256 uses, a linger of 1ms after a commit of 8 checks
// or more, time.Now and a no-op logger. (m1 bench --addr --mode approval
// against m1-authz: 50 calls in flight, 0.32× the no-op server without the
// linger, 0.38× with it; 4 in flight, 0.14× lingering after 2 checks, 0.23×
// after 8, the same as without.)
func DefaultOptions() Options {
	return Options{Timeout: time.Second, MaxBatch: 256, Linger: time.Millisecond, LingerAfter: 8, Now: time.Now, Logger: zap.NewNop()}
}

func (o *Options) fill() {
	d := DefaultOptions()
	if o.Timeout <= 0 {
		o.Timeout = d.Timeout
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = d.MaxBatch
	}
	if o.Linger == 0 {
		o.Linger = d.Linger
	}
	if o.LingerAfter <= 0 {
		o.LingerAfter = d.LingerAfter
	}
	if o.Now == nil {
		o.Now = d.Now
	}
	if o.Logger == nil {
		o.Logger = d.Logger
	}
}

// Zap field names.
const (
	fieldEpoch    = "epoch"
	fieldPrevious = "previous_epoch"
	fieldCount    = "revocations"
	fieldUses     = "used_up"
)

// pruneEvery is how often expired use records are deleted.
const pruneEvery = 10 * time.Minute

// errNotLoaded answers a use before Load succeeded.
var errNotLoaded = fmt.Errorf("%w: the state has not been loaded from the store yet", state.ErrUnavailable)

// Store is the durable state store: uses counted in the store, its epoch,
// and revocations (embedded Revocations over an in-process set). It
// satisfies the decision path's UseStore, RevocationChecker and Epoch
// interfaces and the revocation API's store. Its methods are safe for
// concurrent use.
type Store struct {
	*Revocations
	db   store.State
	opts Options
	log  *zap.Logger

	epoch   atomic.Int64 // adopted epoch, unix seconds; 0 before Load
	epochMu sync.Mutex   // serialises epoch changes

	mu       sync.Mutex
	next     *batch     // the batch new uses join; nil when none is open
	commitMu sync.Mutex // one commit at a time
	pruneAt  time.Time  // commitMu

	used usedUp

	resMu    sync.Mutex
	reserved map[string]*reservation // resMu; grants with a block in use
	resSweep int                     // resMu; sweep expired entries past this size

	lastBatch atomic.Int64  // checks whose uses the last commit recorded
	commits   atomic.Uint64 // transactions that recorded uses
	uses      atomic.Uint64 // uses they recorded
}

// Stats counts the store's group commits.
type Stats struct {
	Commits uint64 // transactions that recorded uses
	Uses    uint64 // uses submitted to them
}

// Stats returns the commits so far; Uses/Commits is the mean group size.
func (s *Store) Stats() Stats {
	return Stats{Commits: s.commits.Load(), Uses: s.uses.Load()}
}

var _ RevocationSet = (*Store)(nil)

// New returns a store on db. It does not touch db: call Load before
// serving (and again until it succeeds).
func New(db store.State, o Options) (*Store, error) {
	if db == nil {
		return nil, errors.New("storestate: nil db")
	}
	if o.EpochMargin < 0 {
		return nil, fmt.Errorf("storestate: EpochMargin %v is negative", o.EpochMargin)
	}
	o.fill()
	s := &Store{db: db, opts: o, log: o.Logger}
	s.Revocations = NewRevocations(db, state.NewMemory(state.MemoryOptions{Now: o.Now}), o)
	s.used.init()
	s.reserved, s.resSweep = map[string]*reservation{}, 1024
	return s, nil
}

// String describes the store for logs.
func (s *Store) String() string { return "store" }

// Epoch returns the adopted epoch: tokens issued before it are refused
// (state_reset). It is zero before Load.
func (s *Store) Epoch() time.Time {
	if e := s.epoch.Load(); e != 0 {
		return time.Unix(e, 0)
	}
	return time.Time{}
}

// candidate is the epoch a new store gets: the next whole second after
// now + EpochMargin, and after prev.
func (s *Store) candidate(prev int64) time.Time {
	return time.Unix(max(s.opts.Now().Add(s.opts.EpochMargin).Unix()+1, prev+1), 0)
}

// Load adopts the store's epoch (setting one on a new store), loads the
// approvals and grants that are used up, and restores the revocations. It
// may be called again after a failure; the parts that succeeded are not
// repeated. Until it succeeds, Use and Revoked fail with
// state.ErrUnavailable.
func (s *Store) Load(ctx context.Context) error {
	if s.epoch.Load() == 0 {
		s.epochMu.Lock()
		c := s.candidate(0)
		e, err := s.db.StateEpoch(ctx, c)
		if err != nil {
			s.epochMu.Unlock()
			return fmt.Errorf("%w: load state epoch: %w", state.ErrUnavailable, err)
		}
		now := s.opts.Now()
		n := 0
		err = s.db.Uses(ctx, now, func(u store.UseRecord) error {
			if u.Uses >= u.MaxUses {
				s.used.add(u.JTI, u.ExpiresAt, now)
				n++
			}
			return nil
		})
		if err != nil {
			s.epochMu.Unlock()
			return fmt.Errorf("%w: load uses: %w", state.ErrUnavailable, err)
		}
		s.epoch.Store(e.Unix())
		s.epochMu.Unlock()
		if e.Equal(c) {
			s.log.Warn("new state epoch (a new store, or one whose state was lost): tokens issued before it are refused (state_reset)",
				zap.Time(fieldEpoch, e))
		} else {
			s.log.Info("state epoch adopted", zap.Time(fieldEpoch, e), zap.Int(fieldUses, n))
		}
	}
	return s.Revocations.Load(ctx)
}

// Revoked answers from the process's set; before Load succeeded it fails
// with state.ErrUnavailable (the set does not hold the store's revocations
// yet).
func (s *Store) Revoked(ctx context.Context, jti, sub string) (bool, error) {
	if !s.Revocations.Loaded() {
		return false, errNotLoaded
	}
	return s.Revocations.Revoked(ctx, jti, sub)
}

// Use records one use of u.JTI in the store and reports whether it counted
// (DESIGN §4 check 11): an approval (MaxUses 1) once, a grant up to
// MaxUses times, across restarts and across the processes that share the
// database. It returns once the use is committed. A token issued before
// the epoch fails with an error wrapping state.ErrStateReset, checked
// against the epoch the commit verifies; a store that cannot record the
// use, or does not answer within Options.Timeout, fails with one wrapping
// state.ErrUnavailable.
func (s *Store) Use(ctx context.Context, u state.Use) (bool, error) {
	if err := u.Validate(); err != nil {
		return false, err
	}
	e := s.epoch.Load()
	if e == 0 || !s.Revocations.Loaded() {
		return false, errNotLoaded
	}
	if u.IssuedAt.Before(time.Unix(e, 0)) {
		return false, resetErr(u, e)
	}
	if u.MaxUses > 1 && s.opts.Reserve > 1 {
		return s.useReserved(ctx, u)
	}
	if s.used.has(u.JTI, s.opts.Now()) {
		return false, nil
	}
	n, err := s.record(ctx, u, 1)
	return n == 1, err
}

// reservation is a grant's block of uses counted in the store and not
// handed out yet.
type reservation struct {
	left    int
	block   int           // the size of the last block asked for (≤ Reserve, ≤ max_uses/10)
	taken   time.Time     // when the last block was counted
	exp     time.Time     // the grant's record expiry
	pending chan struct{} // closed when the block being counted is in
}

// reserveFast: a block refilled within this of the last doubles; a slower
// grant goes back to one use at a time.
const reserveFast = time.Second

// useReserved hands out one use of a grant from its block. A block half
// used is refilled in the background while the rest is handed out; an
// empty one is refilled by the caller (one refill at a time per grant: the
// others wait for it).
func (s *Store) useReserved(ctx context.Context, u state.Use) (bool, error) {
	for {
		now := s.opts.Now()
		s.resMu.Lock()
		r := s.reserved[u.JTI]
		if r == nil {
			s.sweepReservedLocked(now)
			r = &reservation{exp: u.Exp}
			s.reserved[u.JTI] = r
		}
		if r.left > 0 {
			r.left--
			if r.block > 1 && r.left <= r.block/2 && r.pending == nil {
				k := s.refillLocked(r, u, now)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
					defer cancel()
					n, _ := s.record(ctx, u, k) // an error shows at the next refill
					s.refilled(r, u, n)
				}()
			}
			s.resMu.Unlock()
			return true, nil
		}
		if ch := r.pending; ch != nil {
			s.resMu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return false, fmt.Errorf("%w: record use: %w", state.ErrUnavailable, ctx.Err())
			}
		}
		if s.used.has(u.JTI, now) {
			s.resMu.Unlock()
			return false, nil
		}
		k := s.refillLocked(r, u, now)
		s.resMu.Unlock()
		n, err := s.record(ctx, u, k) // n > 0 only without an error
		if n == 0 {
			s.refilled(r, u, 0)
			return false, err
		}
		s.refilled(r, u, n-1) // one is this call's
		return true, nil
	}
}

// refillLocked sizes the grant's next block and marks its refill pending:
// twice the last block when that was counted less than reserveFast ago,
// else one use; never more than Reserve or a tenth of max_uses.
func (s *Store) refillLocked(r *reservation, u state.Use, now time.Time) int {
	if !r.taken.IsZero() && now.Sub(r.taken) < reserveFast {
		r.block = max(1, min(2*r.block, s.opts.Reserve, u.MaxUses/10))
	} else {
		r.block = 1
	}
	r.pending = make(chan struct{})
	return r.block
}

// refilled adds n counted uses to the grant's block and ends its refill.
func (s *Store) refilled(r *reservation, u state.Use, n int) {
	s.resMu.Lock()
	defer s.resMu.Unlock()
	r.left += n
	r.taken, r.exp = s.opts.Now(), u.Exp
	close(r.pending)
	r.pending = nil
}

// sweepReservedLocked drops the reservations of expired grants once the
// map has grown past its sweep size.
func (s *Store) sweepReservedLocked(now time.Time) {
	if len(s.reserved) < s.resSweep {
		return
	}
	for jti, r := range s.reserved {
		if r.pending == nil && now.After(r.exp) {
			delete(s.reserved, jti)
		}
	}
	s.resSweep = max(1024, 2*len(s.reserved))
}

func resetErr(u state.Use, epoch int64) error {
	return fmt.Errorf("%w: token issued at %s, epoch %s", state.ErrStateReset,
		u.IssuedAt.UTC().Format(time.RFC3339), time.Unix(epoch, 0).UTC().Format(time.RFC3339))
}

// batch is the uses of one commit.
type batch struct {
	uses   []state.Use
	res    []result
	checks int           // record calls: a grant's block is one check's
	full   chan struct{} // closed when uses reaches MaxBatch
	done   chan struct{} // closed when res is set
}

type result struct {
	ok  bool
	err error
}

// record adds n uses of u to the open batch (opening one and starting its
// commit if none is open), waits for the batch's commit, and returns how
// many of them were counted: n uses of a grant are counted up to its
// limit, in one read and one write (sqlite's recordBatch).
func (s *Store) record(ctx context.Context, u state.Use, n int) (int, error) {
	s.mu.Lock()
	b := s.next
	if b == nil || len(b.uses) >= s.opts.MaxBatch {
		b = &batch{full: make(chan struct{}), done: make(chan struct{})}
		s.next = b
		go s.commit(b)
	}
	i := len(b.uses)
	for range n {
		b.uses = append(b.uses, u)
	}
	b.checks++
	if i < s.opts.MaxBatch && len(b.uses) >= s.opts.MaxBatch {
		close(b.full)
	}
	s.mu.Unlock()
	t := time.NewTimer(s.opts.Timeout)
	defer t.Stop()
	select {
	case <-b.done:
		counted := 0
		for _, r := range b.res[i : i+n] {
			if r.err != nil {
				return 0, r.err
			}
			if r.ok {
				counted++
			}
		}
		return counted, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: record use: %w", state.ErrUnavailable, ctx.Err())
	case <-t.C:
		return 0, fmt.Errorf("%w: record use: the store did not answer within %v", state.ErrUnavailable, s.opts.Timeout)
	}
}

// commit waits for the commit before it, closes b to new uses, and records
// them in one transaction.
func (s *Store) commit(b *batch) {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	s.linger(b)
	s.mu.Lock()
	if s.next == b {
		s.next = nil
	}
	s.mu.Unlock()
	defer close(b.done)
	b.res = make([]result, len(b.uses))
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.Timeout)
	defer cancel()

	e := s.epoch.Load()
	now := s.opts.Now()
	uses := make([]store.Use, 0, len(b.uses))
	idx := make([]int, 0, len(b.uses))
	for i, u := range b.uses {
		if u.IssuedAt.Before(time.Unix(e, 0)) { // the epoch moved since Use checked
			b.res[i].err = resetErr(u, e)
			continue
		}
		uses = append(uses, store.Use{JTI: u.JTI, MaxUses: u.MaxUses, ExpiresAt: u.Exp})
		idx = append(idx, i)
	}
	if len(uses) == 0 {
		return
	}
	s.lastBatch.Store(int64(b.checks))
	counted, err := s.db.RecordUses(ctx, time.Unix(e, 0), now, uses)
	s.commits.Add(1)
	s.uses.Add(uint64(len(uses)))
	switch {
	case errors.Is(err, store.ErrEpochChanged):
		ne, rerr := s.reset(ctx, e)
		for _, i := range idx {
			if rerr != nil {
				b.res[i].err = fmt.Errorf("%w: %w", state.ErrUnavailable, rerr)
			} else {
				b.res[i].err = resetErr(b.uses[i], ne)
			}
		}
		return
	case err != nil:
		for _, i := range idx {
			b.res[i].err = fmt.Errorf("%w: %w", state.ErrUnavailable, err)
		}
		return
	}
	for j, i := range idx {
		u := b.uses[i]
		b.res[i].ok = counted[j]
		if !counted[j] || u.MaxUses == 1 {
			s.used.add(u.JTI, u.Exp, now)
		}
	}
	if now.After(s.pruneAt) {
		s.pruneAt = now.Add(pruneEvery)
		if _, err := s.db.PruneUses(ctx, now); err != nil {
			s.log.Warn("prune expired uses", zap.Error(err))
		}
	}
}

// linger keeps b open for Options.Linger when the last commit recorded the
// uses of Options.LingerAfter checks or more, or until b is full.
func (s *Store) linger(b *batch) {
	if s.opts.Linger <= 0 || s.lastBatch.Load() < int64(s.opts.LingerAfter) {
		return
	}
	t := time.NewTimer(s.opts.Linger)
	defer t.Stop()
	select {
	case <-t.C:
	case <-b.full:
	}
}

// reset adopts the epoch the store holds after it was found changed (a
// new one when it has none), writes the process's revocations back, and
// returns the adopted epoch.
func (s *Store) reset(ctx context.Context, prev int64) (int64, error) {
	s.epochMu.Lock()
	defer s.epochMu.Unlock()
	e, err := s.db.StateEpoch(ctx, s.candidate(prev))
	if err != nil {
		return prev, fmt.Errorf("read the state epoch after it changed: %w", err)
	}
	ne := max(e.Unix(), prev)
	s.epoch.Store(ne)
	s.log.Warn("state epoch changed (the store lost its state?): tokens issued before the new epoch are refused",
		zap.Time(fieldEpoch, time.Unix(ne, 0)), zap.Time(fieldPrevious, time.Unix(prev, 0)))
	if err := s.Revocations.writeBack(ctx); err != nil {
		s.log.Error("revocations not written back to the store", zap.Error(err))
	}
	return ne, nil
}

// usedUp remembers the approvals and grants known to be used up, until
// they expire, so that a replay is answered without a transaction.
type usedUp struct {
	mu      sync.Mutex
	m       map[string]time.Time // jti → expiry
	sweepAt int
}

func (u *usedUp) init() { u.m, u.sweepAt = map[string]time.Time{}, 1024 }

func (u *usedUp) has(jti string, now time.Time) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	exp, ok := u.m[jti]
	return ok && !now.After(exp)
}

func (u *usedUp) add(jti string, exp, now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.m) >= u.sweepAt {
		for k, e := range u.m {
			if now.After(e) {
				delete(u.m, k)
			}
		}
		u.sweepAt = max(1024, 2*len(u.m))
	}
	if e, ok := u.m[jti]; !ok || exp.After(e) {
		u.m[jti] = exp
	}
}
