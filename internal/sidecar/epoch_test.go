package sidecar

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/m1-agent/m1/internal/testenv"
)

// A sidecar says when it accepts approvals: once per state epoch, when the
// epoch is reached. An operator (and the README's walk-through) waits for
// the line after starting on a new data directory or a new Redis, which
// refuse the approvals issued in their first M1_CLOCK_SKEW; on a store
// that has been running it comes at once.
func TestEpochAcceptingApprovalsLogged(t *testing.T) {
	k := newKeyed(t)
	cases := []struct {
		name   string
		future bool // the epoch lies ahead at start
		setup  func(o *Options)
	}{
		{"new data directory", true, func(o *Options) { o.DataDir = t.TempDir() }},
		{"data directory running for an hour", false, func(o *Options) { o.DataDir = testenv.DataDir(t) }},
		{"new Redis", true, func(o *Options) {
			o.Redis.URL = testenv.StartRedis(t, testenv.RedisOptions{}).URL()
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.InfoLevel)
			o := k.options(t, testenv.DataDir(t))
			o.ClockSkew, o.Logger = time.Second, zap.New(core)
			c.setup(&o)
			s := startServer(t, o)
			testenv.Eventually(t, 15*time.Second, "the line "+msgAcceptingApprovals, func() bool {
				return logs.FilterMessage(msgAcceptingApprovals).Len() > 0
			})
			epoch := s.epoch.Epoch()
			if c.future {
				warned := 0
				for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
					if at, ok := e.ContextMap()["epoch"].(time.Time); ok && at.Equal(epoch) && strings.Contains(e.Message, "refused (state_reset)") {
						warned++
					}
				}
				if warned != 1 {
					t.Errorf("warnings that tokens issued before the new epoch %v are refused = %d, want 1: %v", epoch, warned, logs.All())
				}
			}
			line := logs.FilterMessage(msgAcceptingApprovals).All()[0]
			if line.Time.Before(epoch) {
				t.Errorf("%q logged at %v, before the epoch %v", msgAcceptingApprovals, line.Time, epoch)
			}
			if got, _ := line.ContextMap()["epoch"].(time.Time); !got.Equal(epoch) {
				t.Errorf("%q names the epoch %v, want %v", msgAcceptingApprovals, got, epoch)
			}
			expectCheck(t, s, "an approval issued after the line", k.mint(t, "agent-42", nil), allowed)
			time.Sleep(2 * epochPoll) // no second line for the same epoch
			if n := logs.FilterMessage(msgAcceptingApprovals).Len(); n != 1 {
				t.Errorf("%q logged %d times for one epoch, want once", msgAcceptingApprovals, n)
			}
		})
	}
}
