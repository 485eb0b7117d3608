package sidecar

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/checkpoint"
)

// checkpointer writes signed checkpoints of this process's audit chain
// (DESIGN §9) every CheckpointEvery, and once more at Stop, skipping a
// head already written.
type checkpointer struct {
	s      *Server
	key    checkpoint.Key
	target checkpoint.Target
	total  *prometheus.CounterVec // m1_audit_checkpoints_total{result}
	last   checkpoint.Head
	stop   context.CancelFunc
	done   chan struct{}
}

// setupCheckpoints loads the key and opens the target, so that a bad
// configuration fails at start.
func (s *Server) setupCheckpoints() error {
	o := s.opts
	if o.Checkpoint.Out == "" {
		return nil
	}
	key, err := checkpoint.LoadKey(o.Checkpoint.KeyFile)
	if err != nil {
		return fmt.Errorf("M1_AUDIT_CHECKPOINT_KEY_FILE: %w", err)
	}
	tg, err := checkpoint.Open(o.Checkpoint.Out, o.Checkpoint.Token)
	if err != nil {
		return fmt.Errorf("M1_AUDIT_CHECKPOINT_OUT: %w", err)
	}
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "m1_audit_checkpoints_total",
		Help: "Signed audit checkpoints of this process's chain, by result (ok|error).",
	}, []string{"result"})
	if err := o.Registerer.Register(total); err != nil {
		return fmt.Errorf("register checkpoint metrics: %w", err)
	}
	total.WithLabelValues("ok")
	total.WithLabelValues("error")
	s.checkpoints = &checkpointer{s: s, key: key, target: tg, total: total, done: make(chan struct{})}
	return nil
}

// start runs the schedule until close.
func (c *checkpointer) start(ctx context.Context) {
	ctx, c.stop = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(c.done)
		t := time.NewTicker(c.s.opts.Checkpoint.Every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.write(ctx)
			}
		}
	}()
}

// close stops the schedule and writes the last checkpoint (after the
// audit recorder flushed), within ctx.
func (c *checkpointer) close(ctx context.Context) {
	if c.stop != nil {
		c.stop()
		<-c.done
	}
	c.write(ctx)
}

// write checkpoints the chain's head as the store holds it, unless it was
// written already or the chain has nothing stored yet.
func (c *checkpointer) write(ctx context.Context) {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := func() error {
		st, err := c.s.storeSink.Store(wctx)
		if err != nil {
			return err
		}
		cp, err := checkpoint.Take(wctx, st, c.s.auditWriter, c.s.opts.Now())
		if err != nil || len(cp.Heads) == 0 || cp.Heads[0] == c.last {
			return err
		}
		signed, err := checkpoint.Sign(cp, c.key)
		if err != nil {
			return err
		}
		if err := c.target.Put(wctx, checkpoint.Name(cp, signed), signed); err != nil {
			return err
		}
		c.last = cp.Heads[0]
		c.total.WithLabelValues("ok").Inc()
		c.s.log.Info("audit checkpoint written", zap.String("writer", c.last.Writer), zap.Int64("seq", c.last.Seq))
		return nil
	}()
	if err != nil {
		c.total.WithLabelValues("error").Inc()
		c.s.log.Warn("audit checkpoint failed", zap.Error(err))
	}
}
