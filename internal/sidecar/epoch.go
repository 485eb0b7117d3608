package sidecar

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// epochPoll is how often the sidecar looks at its state epoch: the line
// that says approvals are accepted comes at most this late.
const epochPoll = 500 * time.Millisecond

// msgAcceptingApprovals is logged once per state epoch, when approvals
// issued since it are accepted (operators and docs/README.md wait for it).
const msgAcceptingApprovals = "accepting approvals issued since the state epoch"

// watchEpoch logs msgAcceptingApprovals once per state epoch (DESIGN §7),
// when the epoch is reached: at once for an epoch already past (a restart
// on the same store, a Redis that other sidecars set up), else at the
// epoch. A new data directory, a new Redis and one that lost its data
// start an epoch M1_CLOCK_SKEW ahead and refuse the approvals issued
// before it (state_reset); the state packages log that when it happens,
// this tells when it ends. It returns when ctx ends.
func (s *Server) watchEpoch(ctx context.Context) {
	t := time.NewTicker(epochPoll)
	defer t.Stop()
	var logged time.Time
	for {
		if e := s.epoch.Epoch(); !e.IsZero() && !e.Equal(logged) && !s.opts.Now().Before(e) {
			s.log.Info(msgAcceptingApprovals, zap.Time("epoch", e))
			logged = e
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
