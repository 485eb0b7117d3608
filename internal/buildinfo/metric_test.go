package buildinfo

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := RegisterMetric(reg, "0.10.0", "abc123"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "m1_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("Gather() = %v, want one m1_build_info series", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != "0.10.0" || labels["revision"] != "abc123" || labels["goversion"] != runtime.Version() || m.GetGauge().GetValue() != 1 {
		t.Errorf("m1_build_info = %v %v, want {version=0.10.0, revision=abc123, goversion=%s} 1", labels, m.GetGauge().GetValue(), runtime.Version())
	}
	if err := RegisterMetric(reg, "0.10.0", "abc123"); err == nil {
		t.Error("RegisterMetric twice on one registry: no error")
	}
}
