package redisstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Event types on the channel.
const (
	EventRevoke = "revoke" // JTI or Sub revoked until Until
	EventLift   = "lift"   // Sub's revocation lifted
	EventBundle = "bundle" // a new policy bundle revision (Revision): drop cached decisions
	EventFlush  = "flush"  // drop every cached decision
)

// Event is a message on the channel, JSON-encoded.
type Event struct {
	Type     string `json:"type"`
	JTI      string `json:"jti,omitempty"`
	Sub      string `json:"sub,omitempty"`
	Until    int64  `json:"until,omitempty"` // unix ms; 0 = until lifted
	Revision string `json:"revision,omitempty"`
	Origin   string `json:"origin,omitempty"` // the publishing process (a random id per Store)
}

// PublishInvalidate publishes a bundle or flush event to every process
// (the others' OnInvalidate receive it; this process's does not). It fails
// with an error wrapping ErrUnavailable when Redis is unreachable.
func (s *Store) PublishInvalidate(ctx context.Context, ev Event) error {
	if ev.Type != EventBundle && ev.Type != EventFlush {
		return fmt.Errorf("redisstate: PublishInvalidate: event type %q, want %q or %q", ev.Type, EventBundle, EventFlush)
	}
	ctx, cancel := context.WithTimeout(ctx, adminTimeout)
	defer cancel()
	payload := s.payload(ev)
	_, err := call(ctx, s, func(ctx context.Context) (int64, error) {
		return s.client.Publish(ctx, s.opts.Channel, payload).Result()
	})
	if err != nil {
		return &unavailable{"publish " + ev.Type, err}
	}
	return nil
}

// Start subscribes to the channel and applies events until ctx ends, then
// returns nil. go-redis reconnects and resubscribes by itself; on every
// (re)subscribe, and whenever a use finds a new epoch, Start resyncs (see
// Resync), retrying with backoff while Redis is unreachable. Start may be
// called once.
func (s *Store) Start(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("redisstate: Start called twice")
	}
	ps := s.client.Subscribe(ctx, s.opts.Channel)
	defer ps.Close()
	msgs := ps.ChannelWithSubscriptions(
		redis.WithChannelSize(1024),
		redis.WithChannelHealthCheckInterval(time.Second),
		redis.WithChannelPingTimeout(time.Second),
	)
	done := make(chan struct{})
	defer func() { <-done }()
	go func() {
		defer close(done)
		s.resyncLoop(ctx)
	}()
	s.kickReload()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			s.handle(m)
		}
	}
}

// handle applies one message from the subscription.
func (s *Store) handle(m any) {
	switch m := m.(type) {
	case *redis.Subscription:
		if m.Kind == "subscribe" {
			s.log.Debug("subscribed", zap.String(fieldChannel, m.Channel))
			s.kickReload() // events may have been missed while unsubscribed
		}
	case *redis.Message:
		var ev Event
		if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil {
			s.log.Warn("malformed event ignored", zap.String(fieldChannel, m.Channel), zap.Error(err))
			return
		}
		if ev.Origin == s.id { // already applied when it was made
			return
		}
		switch ev.Type {
		case EventRevoke, EventLift:
			s.revs.apply(ev, s.nowMs())
		case EventBundle, EventFlush:
			if s.opts.OnInvalidate != nil {
				s.opts.OnInvalidate(ev)
			}
		default:
			s.log.Debug("unknown event ignored", zap.String(fieldType, ev.Type))
		}
	}
}

// resyncLoop resyncs whenever kicked, retrying failures with capped
// exponential backoff, until ctx ends.
func (s *Store) resyncLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		backoff := 50 * time.Millisecond
		for failures := 0; ; failures++ {
			rctx, cancel := context.WithTimeout(ctx, reloadTimeout)
			err := s.Resync(rctx)
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if failures == 0 {
				s.log.Warn("resync failed; retrying until Redis answers", zap.Error(err))
			}
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			case <-s.kick:
				t.Stop()
			}
			backoff = min(2*backoff, 5*time.Second)
		}
	}
}
