package outcome_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/m1-agent/m1/internal/outcome"
	"github.com/m1-agent/m1/internal/store"
)

// events collects the result events handed to the auditor.
type events struct {
	mu sync.Mutex
	ev []store.Event
	// gate, when set, blocks Record until it is closed (a slow store).
	gate chan struct{}
}

func (a *events) Record(e store.Event) {
	if a.gate != nil {
		<-a.gate
	}
	a.mu.Lock()
	a.ev = append(a.ev, e)
	a.mu.Unlock()
}

func (a *events) all() []store.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]store.Event(nil), a.ev...)
}

type fixture struct {
	srv  *outcome.Server
	m    *outcome.Metrics
	aud  *events
	grpc *grpc.Server
	conn *grpc.ClientConn
}

func start(t *testing.T, o outcome.Options, aud *events) *fixture {
	t.Helper()
	if o.Metrics == nil {
		m, err := outcome.NewMetrics(prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		o.Metrics = m
	}
	if aud != nil {
		o.Audit = aud
	}
	srv, err := outcome.New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(4 << 20))
	accesslogv3.RegisterAccessLogServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{srv: srv, m: o.Metrics, aud: aud, grpc: gs, conn: conn}
	t.Cleanup(func() {
		conn.Close()
		srv.StopStreams()
		gs.GracefulStop()
		_ = srv.Close(context.Background())
	})
	return f
}

// send streams entries as Envoy does (identifier first) and waits for the
// server to take them all.
func (f *fixture) send(t *testing.T, entries ...*accesslogdatav3.HTTPAccessLogEntry) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := accesslogv3.NewAccessLogServiceClient(f.conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "test"}, LogName: "m1_tool_outcomes"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}},
	}
	if err := st.Send(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := st.CloseAndRecv(); err != nil {
		t.Fatalf("CloseAndRecv = %v", err)
	}
}

// allow is a decision event as the decision path audits it.
func allow(id, tool string) store.Event {
	return store.Event{Kind: store.KindDecision, DecisionID: id, Decision: "allow", Reason: "ok", Tool: tool,
		Principal: "agent-1", RunID: "run-1", ProposalID: "prop-1", ArgsSHA256: "abc", TokenJTI: "jti-1", PolicyRevision: "rev-1"}
}

type entryOpt func(*accesslogdatav3.HTTPAccessLogEntry)

func withMeta(v *structpb.Value) entryOpt {
	return func(e *accesslogdatav3.HTTPAccessLogEntry) {
		e.CommonProperties.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			outcome.MetadataNamespace: {Fields: map[string]*structpb.Value{"decision_id": v, "tool": structpb.NewStringValue("forged_tool")}},
		}}
	}
}

func withMetaID(id string) entryOpt { return withMeta(structpb.NewStringValue(id)) }

func withHeader(id string) entryOpt {
	return func(e *accesslogdatav3.HTTPAccessLogEntry) {
		e.Request.RequestHeaders["x-m1-decision-id"] = id
	}
}

func withStatus(code uint32) entryOpt {
	return func(e *accesslogdatav3.HTTPAccessLogEntry) { e.Response.ResponseCode = wrapperspb.UInt32(code) }
}

func withFlags(f *accesslogdatav3.ResponseFlags) entryOpt {
	return func(e *accesslogdatav3.HTTPAccessLogEntry) { e.CommonProperties.ResponseFlags = f }
}

func withoutUpstream(e *accesslogdatav3.HTTPAccessLogEntry) { e.CommonProperties.UpstreamCluster = "" }

// entry is an access-log entry of a request that reached the tool cluster.
func entry(opts ...entryOpt) *accesslogdatav3.HTTPAccessLogEntry {
	e := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			UpstreamCluster:            "tool",
			TimeToLastDownstreamTxByte: durationpb.New(42 * time.Millisecond),
		},
		Request:  &accesslogdatav3.HTTPRequestProperties{Path: "/tools/read_file", RequestHeaders: map[string]string{}},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func ignored(f *fixture, reason string) float64 {
	return testutil.ToFloat64(f.m.Ignored.WithLabelValues(reason))
}

// Each entry either is the outcome of a call this sidecar allowed, and is
// recorded once, or is counted by reason and never trusted.
func TestEntries(t *testing.T) {
	cases := []struct {
		name    string
		decided []store.Event
		entries []*accesslogdatav3.HTTPAccessLogEntry
		reason  string // "" = recorded
		outcome string // of a recorded entry
		result  string
		status  int
		flags   []string
	}{
		{name: "by metadata", decided: []store.Event{allow("d1", "read_file")}, entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withHeader("d1"))},
			outcome: "succeeded", result: "ok", status: 200},
		{name: "by header after the router ran", decided: []store.Event{allow("d1", "read_file")}, entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withHeader("d1"))},
			outcome: "succeeded", result: "ok", status: 200},
		{name: "tool answered 500", decided: []store.Event{allow("d1", "read_file")}, entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withStatus(500))},
			outcome: "failed", result: "tool_error", status: 500},
		{name: "upstream connection failure", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withStatus(503), withFlags(&accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}))},
			outcome: "failed", result: "upstream_failure", status: 503, flags: []string{"UF"}},
		{name: "client went away after the tool answered", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withFlags(&accesslogdatav3.ResponseFlags{DownstreamConnectionTermination: true}))},
			outcome: "succeeded", result: "ok", status: 200, flags: []string{"DC"}},
		{name: "client went away", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withStatus(0), withFlags(&accesslogdatav3.ResponseFlags{DownstreamConnectionTermination: true}))},
			outcome: "failed", result: "client_disconnected", status: 0, flags: []string{"DC"}},

		{name: "absent id", decided: []store.Event{allow("d1", "read_file")}, entries: []*accesslogdatav3.HTTPAccessLogEntry{entry()}, reason: "no_decision_id"},
		{name: "unknown id", decided: []store.Event{allow("d1", "read_file")}, entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d2"))}, reason: "unknown_decision"},
		{name: "forged header beside the metadata", decided: []store.Event{allow("d1", "read_file"), allow("d2", "write_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withHeader("d2"))}, reason: "forged"},
		{name: "header of a request Envoy answered itself", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withHeader("d1"), withoutUpstream, withStatus(413))}, reason: "unverified_header"},
		{name: "duplicated id", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1")), entry(withMetaID("d1"), withStatus(500))},
			reason:  "duplicate", outcome: "succeeded", result: "ok", status: 200},
		{name: "huge id header", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withHeader(strings.Repeat("d", 1<<20)))}, reason: "malformed"},
		{name: "id with odd bytes", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1\n"))}, reason: "malformed"},
		{name: "metadata id not a string", decided: []store.Event{allow("d1", "read_file")},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMeta(structpb.NewNumberValue(1)))}, reason: "malformed"},
		{name: "a denied call", decided: []store.Event{{Kind: store.KindDecision, DecisionID: "d1", Decision: "deny", Tool: "read_file"}},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"), withStatus(403), withoutUpstream)}, reason: "denied"},
		{name: "an allowed MCP request that is no tool call", decided: []store.Event{{Kind: store.KindDecision, DecisionID: "d1", Decision: "allow"}},
			entries: []*accesslogdatav3.HTTPAccessLogEntry{entry(withMetaID("d1"))}, reason: "not_tool_call"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			aud := &events{}
			f := start(t, outcome.Options{}, aud)
			for _, d := range tc.decided {
				f.srv.Decided(d)
			}
			f.send(t, tc.entries...)
			if err := f.srv.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			got := aud.all()
			if tc.reason != "" {
				if n := ignored(f, tc.reason); n != 1 {
					t.Errorf("entry(%s): ignored{reason=%q} = %v, want 1", tc.name, tc.reason, n)
				}
			}
			if tc.outcome == "" {
				if len(got) != 0 || testutil.CollectAndCount(f.m.ToolExecutions) != 0 {
					t.Fatalf("entry(%s) = recorded %+v, want ignored (%s)", tc.name, got, tc.reason)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("entry(%s): %d result events, want 1: %+v", tc.name, len(got), got)
			}
			e := got[0]
			var det struct {
				Source string   `json:"source"`
				Flags  []string `json:"response_flags"`
			}
			if err := json.Unmarshal([]byte(e.Detail), &det); err != nil {
				t.Fatalf("detail %q: %v", e.Detail, err)
			}
			want := allow("d1", "read_file")
			if e.Kind != store.KindResult || e.DecisionID != "d1" || e.Tool != "read_file" || e.Principal != want.Principal ||
				e.RunID != want.RunID || e.ProposalID != want.ProposalID || e.TokenJTI != want.TokenJTI ||
				e.Decision != tc.outcome || e.Reason != tc.result || e.Status != tc.status || det.Source != outcome.DetailSource ||
				strings.Join(det.Flags, ",") != strings.Join(tc.flags, ",") {
				t.Fatalf("entry(%s) = %+v (detail %s), want %s/%s status %d flags %v for d1's read_file", tc.name, e, e.Detail, tc.outcome, tc.result, tc.status, tc.flags)
			}
			if tc.status != 0 && e.LatencyMicros != 42000 {
				t.Errorf("latency = %dµs, want 42000 (time to last downstream byte)", e.LatencyMicros)
			}
			if n := testutil.ToFloat64(f.m.ToolExecutions.WithLabelValues("read_file", tc.outcome)); n != 1 {
				t.Errorf("m1_tool_executions_total{read_file,%s} = %v, want 1", tc.outcome, n)
			}
			wantErr := 0.0
			if tc.outcome == "failed" {
				wantErr = 1
			}
			if n := testutil.ToFloat64(f.m.ToolErrors.WithLabelValues("read_file")); n != wantErr {
				t.Errorf("m1_tool_execution_errors_total{read_file} = %v, want %v", n, wantErr)
			}
		})
	}
}

// A slow store never slows the stream: outcomes beyond the queue are
// counted in the metrics, dropped from the audit trail, and counted.
func TestSlowStoreDropsNotBlocks(t *testing.T) {
	aud := &events{gate: make(chan struct{})}
	f := start(t, outcome.Options{QueueSize: 2}, aud)
	const n = 10
	var entries []*accesslogdatav3.HTTPAccessLogEntry
	for i := range n {
		id := "d" + string(rune('a'+i))
		f.srv.Decided(allow(id, "read_file"))
		entries = append(entries, entry(withMetaID(id)))
	}
	f.send(t, entries...) // returns: the stream was never held up
	if got := testutil.ToFloat64(f.m.ToolExecutions.WithLabelValues("read_file", "succeeded")); got != n {
		t.Fatalf("executions = %v, want %d", got, n)
	}
	dropped := testutil.ToFloat64(f.m.Dropped)
	if dropped < n-3 || dropped > n-2 { // the queue holds 2, the writer 1 at most
		t.Fatalf("dropped = %v, want %d or %d", dropped, n-3, n-2)
	}
	close(aud.gate)
	if err := f.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(aud.all()); got != n-int(dropped) {
		t.Fatalf("%d events recorded, %v dropped; want %d in all", got, dropped, n)
	}
}

// A stream Envoy never ends, and more streams than allowed: StopStreams
// ends them so that the gRPC server drains, and the extra stream is
// refused and counted.
func TestStreamsThatNeverEnd(t *testing.T) {
	f := start(t, outcome.Options{MaxStreams: 2}, &events{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := accesslogv3.NewAccessLogServiceClient(f.conn)
	var open []accesslogv3.AccessLogService_StreamAccessLogsClient
	for range 2 {
		st, err := client.StreamAccessLogs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&accesslogv3.StreamAccessLogsMessage{Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{LogName: "x"}}); err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	for testutil.ToFloat64(f.m.Streams) != 2 {
		time.Sleep(5 * time.Millisecond) // poll readiness
	}
	extra, err := client.StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := extra.CloseAndRecv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream = %v, want ResourceExhausted", err)
	}
	if n := ignored(f, "too_many_streams"); n != 1 {
		t.Fatalf("ignored{too_many_streams} = %v, want 1", n)
	}

	f.srv.StopStreams()
	stopped := make(chan struct{})
	go func() { f.grpc.GracefulStop(); close(stopped) }()
	<-stopped // hangs (and the test times out) if a stream held the server
	for _, st := range open {
		if _, err := st.CloseAndRecv(); status.Code(err) != codes.Unavailable {
			t.Errorf("open stream after StopStreams = %v, want Unavailable", err)
		}
	}
}

// A message over the gRPC size limit ends only its stream; the next
// stream is served. Huge headers within the limit are read past.
func TestHugeMessages(t *testing.T) {
	aud := &events{}
	f := start(t, outcome.Options{}, aud)
	f.srv.Decided(allow("d1", "read_file"))
	big := entry(withMetaID("d1"))
	for i := range 1000 {
		big.Request.RequestHeaders["x-h-"+strings.Repeat("k", 10)+string(rune('a'+i%26))+strings.Repeat("z", i%7)] = strings.Repeat("v", 1000)
	}
	f.send(t, big) // ~1 MB of headers: fine
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := accesslogv3.NewAccessLogServiceClient(f.conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	huge := entry(withHeader("x"))
	huge.Request.RequestHeaders["x-big"] = strings.Repeat("v", 8<<20)
	_ = st.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{huge}}}})
	if _, err := st.CloseAndRecv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("an 8 MiB message = %v, want ResourceExhausted", err)
	}
	for ignored(f, "bad_message") != 1 { // counted as the server's stream ends
		time.Sleep(5 * time.Millisecond)
	}
	f.srv.Decided(allow("d2", "read_file"))
	f.send(t, entry(withMetaID("d2")))
	if err := f.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := aud.all(); len(got) != 2 {
		t.Fatalf("%d result events, want 2 (both calls)", len(got))
	}
}

// panicky is an auditor that panics on every event.
type panicky struct{}

func (panicky) Record(store.Event) { panic("store exploded") }

// A panic while handling an entry or recording its event is a counted
// failure; the stream and the writer go on.
func TestPanicsAreCounted(t *testing.T) {
	m, err := outcome.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	bad := *m
	bad.ToolExecutions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"one_label_only"})
	srv, err := outcome.New(outcome.Options{Metrics: &bad, Audit: panicky{}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	srv.Decided(allow("d1", "read_file"))
	srv.Entry(entry(withMetaID("d1")))
	if n := testutil.ToFloat64(m.Ignored.WithLabelValues("internal_error")); n != 1 {
		t.Fatalf("ignored{internal_error} = %v, want 1", n)
	}

	srv2, err := outcome.New(outcome.Options{Metrics: m, Audit: panicky{}})
	if err != nil {
		t.Fatal(err)
	}
	srv2.Start()
	for _, id := range []string{"d2", "d3"} {
		srv2.Decided(allow(id, "read_file"))
		srv2.Entry(entry(withMetaID(id)))
	}
	if err := srv2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := testutil.ToFloat64(m.Dropped); n != 2 {
		t.Fatalf("dropped = %v, want 2 (both events lost to the panicking auditor, the writer alive)", n)
	}
	if err := srv.Close(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
