package metrics

import (
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Every family the design names is on /metrics from the first scrape,
// before any check was made.
func TestAuthzFamiliesAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewAuthz(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{"m1_policy_checks_total", "m1_check_duration_seconds", "m1_policy_eval_duration_seconds",
		"m1_policy_cache_hits_total", "m1_policy_cache_misses_total", "m1_token_verifications_total"} {
		if !got[name] {
			t.Errorf("Gather() at start lacks %s (has %v)", name, got)
		}
	}
}

func TestBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := RegisterBuildInfo(reg, "0.10.0", "abc123"); err != nil {
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
	if err := RegisterBuildInfo(reg, "0.10.0", "abc123"); err == nil {
		t.Error("RegisterBuildInfo twice on one registry: no error")
	}
}
