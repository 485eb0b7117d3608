package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/m1-agent/m1/internal/policy"
)

// L2 is a shared tier behind the per-process Memory: rediscache.Cache in
// production. Get must return within ctx and its own short bound (an error
// is a miss); Set must not block.
type L2 interface {
	Get(ctx context.Context, k Key) (*policy.Decision, string, bool)
	Set(k Key, d *policy.Decision)
	// Purge is told of a flush; a shared tier may keep its entries (keys
	// hash the revision and the input, so they stay right).
	Purge()
	// SetRevision puts later keys under revision's namespace.
	SetRevision(revision string)
}

// Mode says when Tiered consults its L2 on an L1 miss.
type Mode int

// Modes. In every mode but ModeOff, writes go to L2 while Redis is
// connected; while it is not, Tiered is L1 alone.
const (
	// ModeAuto consults L2 only while it pays: when the moving average of
	// the policy's evaluation time exceeds the moving average of the Redis
	// round trip, and Redis is connected.
	ModeAuto Mode = iota
	// ModeAlways consults L2 on every L1 miss while Redis is connected.
	ModeAlways
	// ModeOff neither reads nor writes L2.
	ModeOff
)

// ParseMode reads "auto", "always" or "off"; "" is auto.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "auto":
		return ModeAuto, nil
	case "always":
		return ModeAlways, nil
	case "off":
		return ModeOff, nil
	}
	return 0, fmt.Errorf("cache mode %q: want auto, always or off", s)
}

// String returns the name ParseMode reads.
func (m Mode) String() string {
	switch m {
	case ModeAuto:
		return "auto"
	case ModeAlways:
		return "always"
	case ModeOff:
		return "off"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Tiered is an L1 Memory in front of a shared L2, with the methods of
// Memory (it satisfies authz.DecisionCache). It is
// safe for concurrent use.
//
// Get answers from L1, else (when the mode says L2 pays) from L2, copying
// an L2 hit into L1. Set writes L1 at once and L2 asynchronously. Purge
// empties L1 and tells L2, which may keep its entries: a key hashes the
// bundle revision and the policy input, so an L2 entry is the decision the
// policy would make again.
type Tiered struct {
	l1        *Memory
	l2        L2
	mode      Mode
	rtt       func() time.Duration
	connected func() bool
	eval      atomic.Int64 // EWMA of evaluation time in ns; 0 before the first
}

// TieredOptions configure NewTiered.
type TieredOptions struct {
	// L1 is the per-process tier, consulted first. Required.
	L1 *Memory
	// L2 is the shared tier; nil behaves as ModeOff.
	L2 L2
	// Mode says when an L1 miss consults L2; the zero value is ModeAuto.
	Mode Mode
	// RTT is the Redis round-trip average (redisconn.Conn.RTT), against
	// which ModeAuto weighs the policy's evaluation time; nil reads as 0.
	RTT func() time.Duration
	// Connected is Redis's health (redisconn.Conn.Connected); nil means
	// always connected.
	Connected func() bool
}

// validate names the first field NewTiered cannot run with.
func (o *TieredOptions) validate() error {
	switch {
	case o.L1 == nil:
		return errors.New("cache: TieredOptions.L1 is required")
	case o.Mode != ModeAuto && o.Mode != ModeAlways && o.Mode != ModeOff:
		return fmt.Errorf("cache: TieredOptions.Mode %v is not a mode", o.Mode)
	}
	return nil
}

// NewTiered returns o.L1 in front of o.L2.
func NewTiered(o TieredOptions) (*Tiered, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.L2 == nil {
		o.Mode = ModeOff
	}
	if o.RTT == nil {
		o.RTT = func() time.Duration { return 0 }
	}
	if o.Connected == nil {
		o.Connected = func() bool { return true }
	}
	return &Tiered{l1: o.L1, l2: o.L2, mode: o.Mode, rtt: o.RTT, connected: o.Connected}, nil
}

// Get returns the decision for k and the tier that answered (TierL1 or
// TierL2). It returns within ctx and L2's own bound. The decision is
// shared: callers must not modify it.
func (t *Tiered) Get(ctx context.Context, k Key) (*policy.Decision, string, bool) {
	if d, _, ok := t.l1.Get(ctx, k); ok {
		return d, TierL1, true
	}
	if !t.consultL2() {
		return nil, TierL1, false
	}
	d, _, ok := t.l2.Get(ctx, k)
	if !ok {
		return nil, TierL2, false
	}
	t.l1.Set(k, d)
	return d, TierL2, true
}

// consultL2 tells whether an L1 miss should ask L2 now.
func (t *Tiered) consultL2() bool {
	switch t.mode {
	case ModeAlways:
		return t.connected()
	case ModeAuto:
		return t.connected() && time.Duration(t.eval.Load()) > t.rtt()
	}
	return false
}

// Set stores d in L1, and queues it for L2 unless the mode is off or L2
// is known to be disconnected. d must not be modified afterwards.
func (t *Tiered) Set(k Key, d *policy.Decision) {
	t.l1.Set(k, d)
	if t.mode != ModeOff && t.connected() {
		t.l2.Set(k, d)
	}
}

// Purge empties L1 and tells L2.
func (t *Tiered) Purge() {
	t.l1.Purge()
	if t.l2 != nil {
		t.l2.Purge()
	}
}

// SetRevision empties L1 and moves L2 to revision's namespace.
func (t *Tiered) SetRevision(revision string) {
	t.l1.Purge()
	if t.l2 != nil {
		t.l2.SetRevision(revision)
	}
}

// ObserveEval folds one policy evaluation time into the average that
// ModeAuto compares with the Redis round trip (weight 1/8 per sample).
func (t *Tiered) ObserveEval(d time.Duration) {
	s := int64(d)
	if s <= 0 {
		s = 1
	}
	for {
		old := t.eval.Load()
		next := s
		if old != 0 {
			next = max(old+(s-old)/8, 1)
		}
		if t.eval.CompareAndSwap(old, next) {
			return
		}
	}
}

// Len is the number of L1 entries, for the dashboard.
func (t *Tiered) Len() int { return t.l1.Len() }

// TieredStats describe a Tiered cache for the dashboard.
type TieredStats struct {
	Mode        string        `json:"mode"`         // auto, always or off
	EvalAverage time.Duration `json:"eval_avg_ns"`  // moving average of policy evaluation time
	RTT         time.Duration `json:"redis_rtt_ns"` // moving average of the Redis round trip
	Connected   bool          `json:"redis_connected"`
	L2Enabled   bool          `json:"l2_enabled"` // an L1 miss consults L2 right now
	L1Entries   int           `json:"l1_entries"`
}

// Stats returns the cache's current state.
func (t *Tiered) Stats() TieredStats {
	return TieredStats{
		Mode:        t.mode.String(),
		EvalAverage: time.Duration(t.eval.Load()),
		RTT:         t.rtt(),
		Connected:   t.l2 != nil && t.connected(),
		L2Enabled:   t.consultL2(),
		L1Entries:   t.l1.Len(),
	}
}
