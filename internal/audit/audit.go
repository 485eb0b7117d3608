// Package audit records every decision durably, off the decision path:
// Record puts an event on a bounded queue; one writer goroutine chains the
// events by hash (store.Chainer), writes them to the store in batches, and
// when the store cannot be reached appends them to a local spool file under
// M1_DATA_DIR, which it replays, in order and exactly once (the store is
// idempotent on writer and seq), when the store answers again. Nothing is
// dropped: a full queue makes Record wait rather than lose an event.
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/store"
)

// Sink is where events end up; store.Store satisfies it.
type Sink interface {
	AppendEvents(ctx context.Context, events []store.Event) error
	Ping(ctx context.Context) error
}

// Options configure a Recorder.
type Options struct {
	Writer     string        // chain name (store.WriterID); required
	Sink       Sink          // required
	SpoolPath  string        // append-only spool file; required
	QueueSize  int           // default 65536
	BatchSize  int           // default 1024
	FlushEvery time.Duration // longest an event waits for its batch; default 100ms
	RetryEvery time.Duration // spool replay attempts while the store is down; default 1s
	Timeout    time.Duration // per store write; default 5s
	// MaxArgsBytes caps the arguments an event keeps (M1_AUDIT_MAX_ARGS_BYTES):
	// larger ones are left out, their args_sha256 alone kept, and the event
	// marked ArgsTruncated. Default DefaultMaxArgsBytes.
	MaxArgsBytes int
	Logger       *zap.Logger
	Registerer   prometheus.Registerer
}

// DefaultMaxArgsBytes is the default Options.MaxArgsBytes, 64 KiB.
const DefaultMaxArgsBytes = 64 << 10

// ArgsBytesLimit is the largest Options.MaxArgsBytes, 4 MiB: an event
// must fit a spool line (maxSpoolLine) with room to spare.
const ArgsBytesLimit = 4 << 20

// Recorder is safe for concurrent use. Start it once; Close flushes.
type Recorder struct {
	o       Options
	queue   chan store.Event
	ready   chan struct{} // a batch is waiting in queue (capacity 1)
	wakeAt  int           // queue length that signals ready
	chainer *store.Chainer
	log     *zap.Logger
	done    chan struct{}
	closed  chan struct{} // Close was called: Record spools directly
	final   chan struct{} // no Record is still enqueueing: the writer drains and exits
	once    sync.Once

	inflight atomic.Int64 // Records between their closed check and their enqueue

	events   prometheus.Counter
	depth    prometheus.GaugeFunc
	spooled  prometheus.Counter
	mu       sync.Mutex // the writer's: guards the fields below, held across store calls
	spoolN   int64      // events in the spool
	spoolLen int64      // spool size in bytes
	written  int64
	lastErr  string

	// A copy of them for Stats, published by the writer when it lets go
	// of mu: /health must answer while a store call hangs.
	statMu sync.Mutex
	stat   Stats
}

// New returns a Recorder; it registers m1_audit_events_total and
// m1_audit_queue_depth on o.Registerer and picks up a spool left by a
// previous run.
func New(o Options) (*Recorder, error) {
	if o.Writer == "" || o.Sink == nil || o.SpoolPath == "" {
		return nil, errors.New("audit: Writer, Sink and SpoolPath are required")
	}
	if o.MaxArgsBytes > ArgsBytesLimit {
		return nil, fmt.Errorf("audit: MaxArgsBytes %d is over %d", o.MaxArgsBytes, ArgsBytesLimit)
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 65536
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1024 // fewer, larger transactions: each commit is an fsync
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = 100 * time.Millisecond
	}
	if o.RetryEvery <= 0 {
		o.RetryEvery = time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxArgsBytes <= 0 {
		o.MaxArgsBytes = DefaultMaxArgsBytes
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	r := &Recorder{
		o: o, queue: make(chan store.Event, o.QueueSize), chainer: store.NewChainer(o.Writer),
		ready: make(chan struct{}, 1), wakeAt: min(o.BatchSize, o.QueueSize),
		log: o.Logger, done: make(chan struct{}), closed: make(chan struct{}), final: make(chan struct{}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_audit_events_total", Help: "Audit events recorded (queued for the store).",
		}),
		spooled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "m1_audit_spooled_events_total", Help: "Audit events written to the local spool because the store was unreachable.",
		}),
	}
	r.depth = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "m1_audit_queue_depth", Help: "Audit events waiting in memory for the writer.",
	}, func() float64 { return float64(len(r.queue)) })
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{r.events, r.depth, r.spooled} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("audit metrics: %w", err)
			}
		}
	}
	if err := repairSpool(o.SpoolPath, o.Logger); err != nil {
		return nil, err
	}
	n, size, err := countSpool(o.SpoolPath)
	if err != nil {
		return nil, err
	}
	r.spoolN, r.spoolLen = n, size
	r.publish()
	if n > 0 {
		r.log.Warn("audit spool from an earlier run will be replayed", zap.String("path", o.SpoolPath), zap.Int64("events", n))
	}
	return r, nil
}

// Record queues e. It never drops: when the queue is full it waits for
// room (the writer spools to disk if the store is slow or down, so the
// wait is short). After Close it writes e to the spool directly.
//
// Arguments beyond MaxArgsBytes as stored (store.StoredArgsLen) are left out
// before e is queued (so they take no room in the queue either) and e is
// marked ArgsTruncated.
//
// Record wakes the writer only when a batch is waiting (or the queue is
// full); otherwise the writer takes the queue at its next tick
// (FlushEvery). So a check does not pay for waking a goroutine, nor the
// writer for a pass of its loop, per event.
func (r *Recorder) Record(e store.Event) {
	r.events.Inc()
	if store.StoredArgsLen(e.Args) > r.o.MaxArgsBytes {
		e.Args, e.ArgsTruncated = nil, true
	}
	// Close waits for every Record that saw the recorder open to finish
	// enqueueing before the writer drains the queue for the last time, so
	// that no event lands in a queue nobody reads.
	r.inflight.Add(1)
	defer r.inflight.Add(-1)
	select {
	case <-r.closed:
		r.spoolLate(e)
		return
	default:
	}
	select {
	case r.queue <- e:
	default:
		r.wake() // full: make room
		select {
		case r.queue <- e:
		case <-r.closed:
			r.spoolLate(e)
			return
		}
	}
	if len(r.queue) >= r.wakeAt {
		r.wake()
	}
}

// wake tells the writer that a batch is waiting, unless it was told already.
func (r *Recorder) wake() {
	select {
	case r.ready <- struct{}{}:
	default:
	}
}

// spoolLate keeps an event recorded after Close: it is chained and spooled.
func (r *Recorder) spoolLate(e store.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.publish()
	batch := []store.Event{e}
	r.chainer.Chain(batch)
	if err := r.appendSpoolLocked(batch); err != nil {
		r.log.Error("audit event lost: spool unwritable after shutdown", zap.String("decision_id", e.DecisionID), zap.Error(err))
	}
}

// Start runs the writer until Close.
func (r *Recorder) Start(ctx context.Context) {
	go r.run(context.WithoutCancel(ctx))
}

// Close stops accepting work, writes out everything queued (to the store,
// or to the spool), and returns when done or when ctx ends.
func (r *Recorder) Close(ctx context.Context) error {
	r.once.Do(func() {
		close(r.closed)
		go func() {
			for r.inflight.Load() > 0 {
				time.Sleep(20 * time.Microsecond)
			}
			close(r.final)
		}()
	})
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("audit flush: %w", ctx.Err())
	}
}

// Stats is the recorder's state for /health.
type Stats struct {
	QueueDepth  int    `json:"queue_depth"`
	SpoolEvents int64  `json:"spool_events"`
	SpoolBytes  int64  `json:"spool_bytes"`
	Written     int64  `json:"written"`
	LastError   string `json:"last_error,omitempty"`
}

// Stats returns a snapshot. It does not wait for the writer: the spool and
// store figures are those of its last step.
func (r *Recorder) Stats() Stats {
	r.statMu.Lock()
	st := r.stat
	r.statMu.Unlock()
	st.QueueDepth = len(r.queue)
	return st
}

// publish copies the writer's figures for Stats; mu is held.
func (r *Recorder) publish() {
	r.statMu.Lock()
	r.stat = Stats{SpoolEvents: r.spoolN, SpoolBytes: r.spoolLen, Written: r.written, LastError: r.lastErr}
	r.statMu.Unlock()
}

func (r *Recorder) run(ctx context.Context) {
	defer close(r.done)
	tick := time.NewTicker(r.o.FlushEvery)
	defer tick.Stop()
	retry := time.NewTicker(r.o.RetryEvery)
	defer retry.Stop()
	batch := make([]store.Event, 0, r.o.BatchSize)
	for {
		select {
		case <-r.ready:
			batch = r.take(ctx, batch)
		case <-tick.C:
			if batch = r.take(ctx, batch); len(batch) > 0 {
				batch = r.flush(ctx, batch)
			}
		case <-retry.C:
			r.replay(ctx)
		case <-r.final:
			for {
				select {
				case e := <-r.queue:
					batch = append(batch, e)
					if len(batch) >= r.o.BatchSize {
						batch = r.flush(ctx, batch)
					}
					continue
				default:
				}
				break
			}
			if len(batch) > 0 {
				r.flush(ctx, batch)
			}
			r.replay(ctx)
			return
		}
	}
}

// take moves the events queued now to batch, flushing every full batch.
// Only the writer receives from the queue, so it holds at least as many
// events as its length said.
func (r *Recorder) take(ctx context.Context, batch []store.Event) []store.Event {
	for n := len(r.queue); n > 0; n-- {
		batch = append(batch, <-r.queue)
		if len(batch) >= r.o.BatchSize {
			batch = r.flush(ctx, batch)
		}
	}
	return batch
}

// flush chains batch and writes it to the store, or to the spool when the
// spool already holds older events (order) or the store fails.
func (r *Recorder) flush(ctx context.Context, batch []store.Event) []store.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.publish()
	// A batch kept after a failed flush is chained already: chain only the
	// events added since, or a retry would renumber what a partial spool
	// write may already hold.
	k := 0
	for k < len(batch) && batch[k].Hash != "" {
		k++
	}
	r.chainer.Chain(batch[k:])
	if r.spoolN == 0 {
		wctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		err := r.o.Sink.AppendEvents(wctx, batch)
		cancel()
		if err == nil {
			r.written += int64(len(batch))
			r.lastErr = ""
			return batch[:0]
		}
		if permanent(err) {
			r.reject(batch, err)
			return batch[:0]
		}
		r.lastErr = err.Error()
		r.log.Warn("audit store unreachable; spooling events locally", zap.Error(err), zap.String("spool", r.o.SpoolPath))
	}
	if err := r.appendSpoolLocked(batch); err != nil {
		// The disk is the last resort; say so loudly, keep the events in
		// memory for the next attempt.
		r.lastErr = "spool: " + err.Error()
		r.log.Error("audit spool unwritable; events kept in memory", zap.Error(err))
		return batch
	}
	return batch[:0]
}

func (r *Recorder) appendSpoolLocked(batch []store.Event) error {
	f, err := os.OpenFile(r.o.SpoolPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, e := range batch {
		if err := enc.Encode(e); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	st, err := f.Stat()
	if err == nil {
		r.spoolLen = st.Size()
	}
	r.spoolN += int64(len(batch))
	r.spooled.Add(float64(len(batch)))
	return f.Close()
}

// replay sends the spool to the store in order, then truncates it. A
// partial replay is repeated from the start next time: the store skips
// what it already has.
func (r *Recorder) replay(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.publish()
	if r.spoolN == 0 {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	err := r.o.Sink.Ping(pctx)
	cancel()
	if err != nil {
		r.lastErr = err.Error()
		return
	}
	f, err := os.Open(r.o.SpoolPath)
	if err != nil {
		r.lastErr = "spool: " + err.Error()
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxSpoolLine)
	batch := make([]store.Event, 0, r.o.BatchSize)
	send := func() error {
		if len(batch) == 0 {
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
		defer cancel()
		err := r.o.Sink.AppendEvents(wctx, batch)
		if permanent(err) {
			r.reject(batch, err)
			err = nil
		}
		batch = batch[:0]
		return err
	}
	var n int64
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		var e store.Event
		if err := json.Unmarshal(line, &e); err != nil {
			// A record cut short (a crash mid-write): keep it for the
			// operator, go on with the rest.
			r.rejectLine(line, err)
			continue
		}
		batch = append(batch, e)
		n++
		if len(batch) == r.o.BatchSize {
			if err := send(); err != nil {
				r.lastErr = err.Error()
				return
			}
		}
	}
	if err := sc.Err(); err != nil {
		r.lastErr = "spool: " + err.Error()
		return
	}
	if err := send(); err != nil {
		r.lastErr = err.Error()
		return
	}
	if err := os.Truncate(r.o.SpoolPath, 0); err != nil {
		r.lastErr = "spool: " + err.Error()
		return
	}
	r.log.Info("audit spool replayed into the store", zap.Int64("events", n))
	r.written += n
	r.spoolN, r.spoolLen, r.lastErr = 0, 0, ""
}

// maxSpoolLine bounds one spooled event: its args are at most
// MaxArgsBytes (ArgsBytesLimit) as stored, and the spool adds no escapes
// to them.
const maxSpoolLine = 16 << 20

// rejectLine sets an undecodable spool line aside. r.mu is held.
func (r *Recorder) rejectLine(line []byte, cause error) {
	r.log.Error("audit spool record unreadable; kept in the rejected file", zap.Error(cause), zap.String("file", r.o.SpoolPath+".rejected"))
	f, err := os.OpenFile(r.o.SpoolPath+".rejected", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// ReportError records a store error seen outside the writer (the start-up
// check), so that /health tells the store is down before any event spools.
func (r *Recorder) ReportError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastErr = err.Error()
	r.publish()
}

// permanent reports store errors that no retry can cure.
func permanent(err error) bool {
	return errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrInvalidEvent)
}

// reject sets a batch the store refuses aside in <spool>.rejected, so that
// it is kept for an operator and does not block the events behind it.
// r.mu is held.
func (r *Recorder) reject(batch []store.Event, cause error) {
	r.log.Error("audit store refused a batch; kept in the rejected file", zap.Error(cause), zap.String("file", r.o.SpoolPath+".rejected"))
	f, err := os.OpenFile(r.o.SpoolPath+".rejected", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		r.log.Error("audit events lost: rejected file unwritable", zap.Error(err), zap.Int("events", len(batch)))
		return
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, e := range batch {
		_ = enc.Encode(e)
	}
}

// repairSpool cuts a record left half-written by a crash off the end of the
// spool (moving it to <spool>.rejected), so that new records start on a
// line of their own.
func repairSpool(path string, log *zap.Logger) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || (err == nil && (len(data) == 0 || data[len(data)-1] == '\n')) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	cut := 0
	if i := strings.LastIndexByte(string(data), '\n'); i >= 0 {
		cut = i + 1
	}
	if f, err := os.OpenFile(path+".rejected", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		_, _ = f.Write(append(data[cut:], '\n'))
		f.Close()
	}
	log.Warn("audit spool ended in a half-written record (a crash); moved it to the rejected file", zap.String("file", path+".rejected"))
	if err := os.Truncate(path, int64(cut)); err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	return nil
}

// countSpool counts the events of an existing spool file.
func countSpool(path string) (n, size int64, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("audit spool: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxSpoolLine)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			n++
		}
	}
	st, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	return n, st.Size(), sc.Err()
}
