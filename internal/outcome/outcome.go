// Package outcome closes the loop of DESIGN §2: it serves Envoy's
// AccessLogService v3 (StreamAccessLogs) on m1-authz's gRPC port and turns
// the access-log entry of each tool call this sidecar allowed into a
// `result` audit event, linked to the decision by decision_id, and into the
// tool-execution metrics (m1_tool_executions_total{tool,outcome},
// m1_tool_execution_errors_total{tool}, m1_tool_execution_duration_seconds).
//
// An entry is trusted only as far as this sidecar can vouch for it:
//
//   - its decision id comes from the ext_authz filter's dynamic metadata
//     (namespace envoy.filters.http.ext_authz, field decision_id), which a
//     client cannot set; the x-m1-decision-id request header is used only
//     when the metadata is absent and the request reached an upstream (the
//     router ran, so ext_authz allowed it and overwrote the header);
//   - the id must be one this process decided recently (a bounded map with a
//     TTL), for an allowed tool call, and is used once;
//   - the tool, principal, run and proposal come from that decision, never
//     from the entry.
//
// Every other entry is counted by reason in
// m1_access_log_entries_ignored_total and otherwise ignored.
//
// The stream never back-pressures Envoy: an entry is classified and counted
// at once (map lookups), and its audit event goes to a bounded queue that
// one goroutine drains into the audit recorder; when the queue is full the
// event is dropped and m1_access_log_dropped_total counts it. A panic while
// handling an entry is counted (reason internal_error), never a crash.
package outcome

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/store"
)

// Auditor receives the result events; audit.Recorder satisfies it. Record
// may block (the recorder never drops): the server calls it from its own
// goroutine, never from a stream.
type Auditor interface {
	Record(store.Event)
}

// Options configure a Server.
type Options struct {
	// Audit receives a result event per trusted entry; nil: metrics only.
	Audit   Auditor
	Metrics *Metrics // required (NewMetrics)
	Logger  *zap.Logger
	Now     func() time.Time
	// QueueSize bounds the result events waiting for Audit; default 4096.
	QueueSize int
	// MaxCalls bounds the allowed tool calls remembered until their entry
	// arrives; default 100000.
	MaxCalls int
	// MaxOthers bounds the other decisions remembered (denies, non-tool
	// calls), so that their entries are counted as what they are rather
	// than as unknown; default 100000.
	MaxOthers int
	// TTL is how long a decision waits for its entry; default 10m (longer
	// than any tool route's timeout plus Envoy's log buffering).
	TTL time.Duration
	// MaxStreams bounds concurrent access-log streams; default 16 (Envoy
	// opens one per worker thread and log name).
	MaxStreams int
}

func (o *Options) validate() error {
	if o.Metrics == nil {
		return errors.New("outcome: Metrics is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 4096
	}
	if o.MaxCalls <= 0 {
		o.MaxCalls = 100_000
	}
	if o.MaxOthers <= 0 {
		o.MaxOthers = 100_000
	}
	if o.TTL <= 0 {
		o.TTL = 10 * time.Minute
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 16
	}
	return nil
}

// call is an allowed tool call waiting for its access-log entry.
type call struct {
	tool, principal, runID, proposalID, argsSHA256, revision, jti string
}

// Server is the AccessLogService and the record of recent decisions. It is
// safe for concurrent use: Start, then serve; StopStreams, then Close.
type Server struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	o       Options
	m       *Metrics
	calls   *recent[call]
	others  *recent[string] // decision id → ignore reason
	streams chan struct{}   // a token per open stream
	quit    chan struct{}   // StopStreams: streams end
	stopped sync.Once

	mu      sync.RWMutex // guards closing against sends on queue
	closing bool
	queue   chan store.Event
	done    chan struct{}
	closed  sync.Once
	started atomic.Bool
}

// New returns a Server; it does not start the audit writer (Start).
func New(o Options) (*Server, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &Server{
		o: o, m: o.Metrics,
		calls:   newRecent[call](o.MaxCalls, o.TTL, o.Now),
		others:  newRecent[string](o.MaxOthers, o.TTL, o.Now),
		streams: make(chan struct{}, o.MaxStreams), quit: make(chan struct{}),
		queue: make(chan store.Event, o.QueueSize), done: make(chan struct{}),
	}, nil
}

// Decided remembers a decision this process made (a KindDecision event, as
// the decision path audits it), so that its access-log entry can be
// trusted. Allowed tool calls wait for their outcome; other decisions are
// remembered only to name their entries' ignore reason. It never blocks.
func (s *Server) Decided(e store.Event) {
	if e.Kind != store.KindDecision || e.DecisionID == "" {
		return
	}
	switch {
	case e.Decision == authz.DecisionAllow && e.Tool != "":
		s.calls.set(e.DecisionID, call{
			tool: e.Tool, principal: e.Principal, runID: e.RunID, proposalID: e.ProposalID,
			argsSHA256: e.ArgsSHA256, revision: e.PolicyRevision, jti: e.TokenJTI,
		})
	case e.Decision == authz.DecisionAllow:
		s.others.set(e.DecisionID, reasonNotToolCall)
	default:
		s.others.set(e.DecisionID, reasonDenied)
	}
}

// Start runs the goroutine that hands result events to Options.Audit, until
// Close.
func (s *Server) Start() {
	if !s.started.CompareAndSwap(false, true) {
		return
	}
	go s.run()
}

func (s *Server) run() {
	defer close(s.done)
	for e := range s.queue {
		s.record(e)
	}
}

// record hands one event to the auditor; a panic there is logged and the
// writer goes on.
func (s *Server) record(e store.Event) {
	defer func() {
		if p := recover(); p != nil {
			s.o.Logger.Error("recording a tool outcome panicked; event lost", zap.String(fieldDecisionID, e.DecisionID), zap.Any("panic", p))
			s.m.Dropped.Inc()
		}
	}()
	if s.o.Audit != nil {
		s.o.Audit.Record(e)
	}
}

// enqueue queues a result event for the auditor without ever waiting:
// when the queue is full (the store is slow) the event is dropped and
// counted.
func (s *Server) enqueue(e store.Event) {
	if s.o.Audit == nil {
		return
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closing {
		s.m.Dropped.Inc()
		return
	}
	select {
	case s.queue <- e:
	default:
		s.m.Dropped.Inc()
	}
}

// QueueDepth is the number of result events waiting for the auditor.
func (s *Server) QueueDepth() int { return len(s.queue) }

// StopStreams ends every open access-log stream (and refuses new ones), so
// that the gRPC server can drain: Envoy's streams never end by themselves.
// Entries Envoy still holds for calls finishing during the drain are lost.
func (s *Server) StopStreams() {
	s.stopped.Do(func() { close(s.quit) })
}

// Close stops the streams, then waits until every queued result event was
// handed to the auditor, or ctx ends. Call it before closing the auditor.
// Safe to call twice.
func (s *Server) Close(ctx context.Context) error {
	s.StopStreams()
	s.closed.Do(func() {
		s.mu.Lock()
		s.closing = true
		close(s.queue)
		s.mu.Unlock()
	})
	if !s.started.Load() {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush tool outcomes: %w", ctx.Err())
	}
}

const fieldDecisionID = "decision_id"

// Metrics returns the metrics the server updates.
func (s *Server) Metrics() *Metrics { return s.m }
