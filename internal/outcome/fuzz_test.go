package outcome_test

import (
	"testing"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/m1-agent/m1/internal/outcome"
)

// FuzzEntry feeds arbitrary access-log entries (any bytes that decode as
// one) to a server that decided one call: an entry is recorded at most
// once, everything else is counted, nothing panics.
func FuzzEntry(f *testing.F) {
	for _, e := range []*accesslogdatav3.HTTPAccessLogEntry{
		entry(withMetaID("d1")), entry(withHeader("d1")), entry(withHeader("d1"), withoutUpstream),
		entry(withMetaID("d1"), withHeader("d2")), entry(),
	} {
		b, _ := proto.Marshal(e)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var e accesslogdatav3.HTTPAccessLogEntry
		if proto.Unmarshal(data, &e) != nil {
			return
		}
		m, _ := outcome.NewMetrics(prometheus.NewRegistry())
		aud := &events{}
		srv, err := outcome.New(outcome.Options{Metrics: m, Audit: aud})
		if err != nil {
			t.Fatal(err)
		}
		srv.Decided(allow("d1", "read_file"))
		srv.Entry(&e)
		srv.Entry(&e)
		if n := testutil.ToFloat64(m.Ignored.WithLabelValues("internal_error")); n != 0 {
			t.Fatalf("entry panicked: %v", &e)
		}
		if got := testutil.CollectAndCount(m.ToolExecutions); got > 1 {
			t.Fatalf("one decision recorded under %d series", got)
		}
		var sum float64
		for _, o := range []string{"succeeded", "failed"} {
			sum += testutil.ToFloat64(m.ToolExecutions.WithLabelValues("read_file", o))
		}
		if sum > 1 {
			t.Fatalf("the same entry twice recorded %v outcomes, want at most 1", sum)
		}
	})
}
