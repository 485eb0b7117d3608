package outcome

import (
	"errors"
	"io"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var _ accesslogv3.AccessLogServiceServer = (*Server)(nil)

// StreamAccessLogs receives Envoy's access-log stream. Envoy keeps it open
// for as long as it runs; it ends when Envoy closes it, when StopStreams is
// called, or when the server stops. Each message is handled before the
// next is read, without waiting on anything but map lookups, so that the
// stream never back-pressures Envoy. At most MaxStreams are open at once;
// another is refused (ResourceExhausted) and counted.
func (s *Server) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	select {
	case s.streams <- struct{}{}:
	default:
		s.m.Ignored.WithLabelValues(reasonTooManyStreams).Inc()
		return status.Error(codes.ResourceExhausted, "too many access-log streams")
	}
	defer func() { <-s.streams }()
	s.m.Streams.Inc()
	defer s.m.Streams.Dec()

	ctx := stream.Context()
	type recv struct {
		msg *accesslogv3.StreamAccessLogsMessage
		err error
	}
	// Recv blocks; reading in a goroutine lets StopStreams end a stream
	// that Envoy never ends. The goroutine ends with the stream: returning
	// from the handler cancels ctx, and Recv returns.
	msgs := make(chan recv)
	go func() {
		for {
			m, err := stream.Recv()
			if c := status.Code(err); err != nil && !errors.Is(err, io.EOF) && c != codes.Canceled && c != codes.DeadlineExceeded {
				// An oversized or undecodable message: gRPC ends the
				// stream (and its context) at once; Envoy reconnects.
				s.m.Ignored.WithLabelValues(reasonBadMessage).Inc()
			}
			select {
			case msgs <- recv{m, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for {
		select {
		case r := <-msgs:
			switch {
			case errors.Is(r.err, io.EOF):
				return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
			case r.err != nil:
				return r.err
			}
			s.handle(r.msg)
		case <-s.quit:
			return status.Error(codes.Unavailable, "m1-authz is shutting down")
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// handle takes one message's entries.
func (s *Server) handle(m *accesslogv3.StreamAccessLogsMessage) {
	switch l := m.GetLogEntries().(type) {
	case *accesslogv3.StreamAccessLogsMessage_HttpLogs:
		for _, e := range l.HttpLogs.GetLogEntry() {
			s.Entry(e)
		}
	case *accesslogv3.StreamAccessLogsMessage_TcpLogs:
		s.m.Ignored.WithLabelValues(reasonNotHTTP).Add(float64(len(l.TcpLogs.GetLogEntry())))
	}
}

// Entry takes one HTTP access-log entry: the outcome of a call this process
// allowed is counted and queued for the audit trail; any other entry is
// counted by reason. It never blocks and never panics.
func (s *Server) Entry(e *accesslogdatav3.HTTPAccessLogEntry) {
	defer func() {
		if p := recover(); p != nil {
			s.o.Logger.Error("access-log entry panicked; ignored", zap.Any("panic", p))
			s.m.Ignored.WithLabelValues(reasonInternalError).Inc()
		}
	}()
	s.m.Entries.Inc()
	id, reason := decisionID(e)
	var c *call
	if reason == "" {
		c, reason = s.claim(id)
	}
	if reason != "" {
		s.m.Ignored.WithLabelValues(reason).Inc()
		if ce := s.o.Logger.Check(zap.DebugLevel, "access-log entry ignored"); ce != nil {
			ce.Write(zap.String("reason", reason), zap.String(fieldDecisionID, id))
		}
		return
	}
	r := classify(e)
	s.m.ToolExecutions.WithLabelValues(c.tool, r.outcome).Inc()
	if r.outcome == OutcomeFailed {
		s.m.ToolErrors.WithLabelValues(c.tool).Inc()
	}
	if r.duration > 0 {
		s.m.ToolDuration.Observe(r.duration.Seconds())
	}
	s.enqueue(c.event(id, r, s.o.Now()))
}

// claim marks the decision's outcome recorded, once: the call when id is
// an allowed tool call of this process whose outcome was not recorded yet,
// else the reason to ignore the entry.
func (s *Server) claim(id string) (*call, string) {
	c, ok, taken := s.calls.get(id, true)
	switch {
	case ok && !taken:
		return &c, ""
	case ok:
		return nil, reasonDuplicate
	}
	if why, ok, _ := s.others.get(id, false); ok {
		return nil, why
	}
	return nil, reasonUnknown
}
