package sidecar

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/checkpoint"
	"github.com/m1-agent/m1/internal/outcome"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// The access log on the sidecar's gRPC port turns the entry of an allowed
// call into a result event linked to its decision, and Stop is not held up
// by a stream Envoy never ends.
func TestToolOutcomeFromAccessLog(t *testing.T) {
	o := testOptions(t)
	s := startServer(t, o)
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, readCall("/tmp/a"))
	if err != nil || code.Code(resp.GetStatus().GetCode()) != code.Code_OK {
		t.Fatalf("Check(read_file) = %v, %v; want allowed", resp.GetStatus(), err)
	}
	md := resp.GetDynamicMetadata()
	id := md.GetFields()["decision_id"].GetStringValue()

	st, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entry := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			UpstreamCluster:            "tool",
			TimeToLastDownstreamTxByte: durationpb.New(3 * time.Millisecond),
			Metadata:                   &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{outcome.MetadataNamespace: md}},
		},
		Request:  &accesslogdatav3.HTTPRequestProperties{Path: "/tools/read_file", RequestHeaders: map[string]string{"x-m1-decision-id": id}},
		Response: &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
	}
	if err := st.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy"}, LogName: "m1_tool_outcomes"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
			LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{entry}}},
	}); err != nil {
		t.Fatal(err)
	}
	// The stream stays open, as Envoy's does; wait until the entry counted.
	for testutil.ToFloat64(s.outcomes.Metrics().ToolExecutions.WithLabelValues("read_file", "succeeded")) != 1 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop with an open access-log stream = %v, want a clean drain", err)
	}

	db, err := backend.Open(context.Background(), "", o.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var got []store.Event
	if err := db.Events(context.Background(), store.Filter{}, func(e store.Event) error {
		if e.DecisionID == id {
			got = append(got, e)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Kind != store.KindDecision || got[1].Kind != store.KindResult ||
		got[1].Tool != "read_file" || got[1].Status != 200 || got[1].Decision != "succeeded" || got[1].LatencyMicros != 3000 {
		t.Fatalf("events of decision %s = %+v, want the decision then a succeeded read_file result (200, 3ms)", id, got)
	}
}

// With M1_AUDIT_CHECKPOINT_OUT the sidecar signs its chain's head; at Stop,
// after the audit queue is flushed, the last one covers every event.
func TestCheckpointAtStop(t *testing.T) {
	k, err := approval.GenerateKey(approval.AlgEdDSA, "checkpoint-1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, _ := k.MarshalPrivateJWK()
	pub, _ := k.PublicJWKS()
	os.WriteFile(filepath.Join(dir, "cp.jwk"), priv, 0o600)
	os.WriteFile(filepath.Join(dir, "jwks.json"), pub, 0o600)
	o := testOptions(t)
	o.Checkpoint.Out, o.Checkpoint.KeyFile = filepath.Join(dir, "checkpoints"), filepath.Join(dir, "cp.jwk")
	s := startServer(t, o)
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := authv3.NewAuthorizationClient(conn)
	for _, p := range []string{"/a", "/b", "/c"} {
		check(t, c, readCall(p), code.Code_OK)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	keys, err := checkpoint.LoadKeys(filepath.Join(dir, "jwks.json"))
	if err != nil {
		t.Fatal(err)
	}
	good, bad, err := checkpoint.ReadDir(o.Checkpoint.Out, keys)
	if err != nil || len(bad) != 0 || len(good) != 1 {
		t.Fatalf("checkpoints = %+v, bad %v, %v; want one", good, bad, err)
	}
	if h := good[0].Heads; len(h) != 1 || h[0].Writer != s.auditWriter || h[0].Seq != 3 {
		t.Fatalf("checkpoint heads = %+v, want %s at seq 3", h, s.auditWriter)
	}
}
