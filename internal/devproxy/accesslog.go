package devproxy

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Names deploy/envoy/envoy.yaml's access log uses, sent alike.
const (
	accessLogName      = "m1_tool_outcomes"             // common_config.log_name
	extAuthzNamespace  = "envoy.filters.http.ext_authz" // the filter's dynamic-metadata namespace
	upstreamClusterTag = "tool"                         // the route's cluster
	accessLogQueue     = 1024
)

// accessLogger sends one HTTPAccessLogEntry per request to m1-authz's
// AccessLogService, as deploy/envoy's http_grpc access log does: on one
// long-lived stream, opened on first use and again after an error. Log
// never waits: entries beyond the queue are dropped (and logged), as a
// request must never wait on its access log. Entries are sent as they come
// (Envoy buffers up to 1 s), so a demo shows outcomes at once.
type accessLogger struct {
	client  accesslogv3.AccessLogServiceClient
	log     *zap.Logger
	mu      sync.RWMutex // guards closed against sends on entries
	closed  bool
	entries chan *accesslogdatav3.HTTPAccessLogEntry
	done    chan struct{}
	dropped atomic.Int64
}

func newAccessLogger(conn *grpc.ClientConn, log *zap.Logger) *accessLogger {
	a := &accessLogger{
		client: accesslogv3.NewAccessLogServiceClient(conn), log: log,
		entries: make(chan *accesslogdatav3.HTTPAccessLogEntry, accessLogQueue), done: make(chan struct{}),
	}
	go a.run()
	return a
}

// Log queues e; it never waits.
func (a *accessLogger) Log(e *accesslogdatav3.HTTPAccessLogEntry) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if a.closed {
		return
	}
	select {
	case a.entries <- e:
	default:
		if a.dropped.Add(1) == 1 {
			a.log.Warn("access log queue full; entries dropped (m1-authz will not see their outcomes)")
		}
	}
}

// Close sends what is queued and closes the stream, until ctx ends.
func (a *accessLogger) Close(ctx context.Context) {
	a.mu.Lock()
	if !a.closed {
		a.closed = true
		close(a.entries)
	}
	a.mu.Unlock()
	select {
	case <-a.done:
	case <-ctx.Done():
	}
}

func (a *accessLogger) run() {
	defer close(a.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stream accesslogv3.AccessLogService_StreamAccessLogsClient
	for e := range a.entries {
		batch := []*accesslogdatav3.HTTPAccessLogEntry{e}
	more:
		for len(batch) < 64 {
			select {
			case e, ok := <-a.entries:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
		}}
		// One retry on a fresh stream: the old one may have been closed by
		// a restarted m1-authz.
		for attempt := 0; attempt < 2; attempt++ {
			if stream == nil {
				s, err := a.client.StreamAccessLogs(ctx)
				if err != nil {
					a.log.Warn("access log: open stream to m1-authz", zap.Error(err))
					break
				}
				stream = s
				msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{
					Node: &corev3.Node{Id: "m1-dev-proxy", Cluster: "m1-dev-proxy"}, LogName: accessLogName,
				}
			}
			err := stream.Send(msg)
			if err == nil {
				break
			}
			a.log.Warn("access log: send to m1-authz; reopening the stream", zap.Error(err))
			_ = stream.CloseSend()
			stream = nil
		}
	}
	if stream != nil {
		_, _ = stream.CloseAndRecv()
	}
}

// exchange is what ServeHTTP learns of one request, for its access-log
// entry.
type exchange struct {
	start    time.Time
	metadata *structpb.Struct // the CheckResponse's dynamic_metadata
	idHeader *string          // x-m1-decision-id as the request carried it (after an allow, m1-authz's)
	routed   bool             // the router ran: the request went upstream
	upFailed bool             // the upstream could not be reached
	denied   bool             // ext_authz denied it (UAEX)
	details  string           // response_code_details
}

// entry is the HTTPAccessLogEntry Envoy's http_grpc logger would send for
// the exchange.
func (x *exchange) entry(r *http.Request, w *statusWriter) *accesslogdatav3.HTTPAccessLogEntry {
	took := time.Since(x.start)
	cp := &accesslogdatav3.AccessLogCommon{
		StartTime:                  timestamppb.New(x.start),
		Duration:                   durationpb.New(took),
		TimeToLastDownstreamTxByte: durationpb.New(took),
		ResponseFlags:              &accesslogdatav3.ResponseFlags{},
	}
	if x.metadata != nil {
		cp.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{extAuthzNamespace: x.metadata}}
	}
	if x.routed {
		cp.UpstreamCluster = upstreamClusterTag
		cp.UpstreamRequestAttemptCount = 1
	}
	switch {
	case x.upFailed:
		cp.ResponseFlags.UpstreamConnectionFailure = true
	case x.denied:
		cp.ResponseFlags.UnauthorizedDetails = &accesslogdatav3.ResponseFlags_Unauthorized{Reason: accesslogdatav3.ResponseFlags_Unauthorized_EXTERNAL_SERVICE}
	case w.code == 0 && r.Context().Err() != nil || w.err != nil:
		// The client went away before its answer was written.
		cp.ResponseFlags.DownstreamConnectionTermination = true
	}
	req := &accesslogdatav3.HTTPRequestProperties{
		RequestMethod: corev3.RequestMethod(corev3.RequestMethod_value[strings.ToUpper(r.Method)]),
		Scheme:        "http",
		Authority:     r.Host,
		Path:          r.URL.RequestURI(),
		UserAgent:     r.UserAgent(),
		RequestId:     r.Header.Get("x-request-id"),
	}
	if x.idHeader != nil {
		req.RequestHeaders = map[string]string{headerDecisionID: *x.idHeader}
	}
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: cp,
		ProtocolVersion:  accesslogdatav3.HTTPAccessLogEntry_HTTP11,
		Request:          req,
		Response: &accesslogdatav3.HTTPResponseProperties{
			ResponseCode:        wrapperspb.UInt32(uint32(w.status())),
			ResponseBodyBytes:   uint64(w.bytes),
			ResponseCodeDetails: x.details,
		},
	}
}

// statusWriter records the status and body size of a response. It passes
// flushes through (server-sent events) via Unwrap.
type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
	err   error // the first failed write
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// status is the status sent, 0 when nothing was (the client went away).
func (w *statusWriter) status() int { return w.code }
