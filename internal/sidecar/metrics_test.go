package sidecar

import "testing"

// TestOwnedMetricsRegistered: the families that the packages recording
// them register (outcome, authz's shadow evaluation, the sidecar's bundle
// loads) are on m1-authz's /metrics from the first scrape, under the
// names DESIGN §8, the alerts and the runbooks use. (deploy/deploytest
// finds the names in the source; this checks that they are registered.)
func TestOwnedMetricsRegistered(t *testing.T) {
	o := testOptions(t)
	startServer(t, o)
	mfs, err := o.Gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{
		"m1_policy_bundle_load_errors_total", "m1_policy_bundle_last_success_timestamp_seconds",
		"m1_policy_shadow_decisions_total", "m1_policy_shadow_skipped_total",
		"m1_tool_execution_duration_seconds", "m1_access_log_entries_total",
		"m1_access_log_entries_ignored_total", "m1_access_log_dropped_total", "m1_access_log_streams",
		"m1_policy_checks_total", "m1_build_info",
	} {
		if !got[name] {
			t.Errorf("m1-authz's registry lacks %s", name)
		}
	}
}
