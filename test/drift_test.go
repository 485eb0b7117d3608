package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
)

// TestPolicyDriftAlert runs two real sidecars on different policy
// revisions, scrapes the revision each one reports, and feeds those series
// to Prometheus's own rule tester (promtool test rules) with
// deploy/prometheus/alerts.yml: M1PolicyRevisionsDiffer fires while they
// differ, and stops once the second sidecar has reloaded the first's
// revision (a real reload, scraped again).
func TestPolicyDriftAlert(t *testing.T) {
	t.Parallel()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found (apt-get install prometheus)")
		}
		t.Skip("SKIPPED LOUDLY: promtool not found (apt-get install prometheus)")
	}
	dirA, dirB := writeBundle(t, revisionPolicy("v1", true)), writeBundle(t, revisionPolicy("v2", false))
	a := startSidecar(t, []string{"--policy-dir", dirA})
	b := startSidecar(t, []string{"--policy-dir", dirB})

	// revisions scrapes the m1_policy_bundle_info series of a sidecar.
	revisions := func(s *sidecar) []string {
		var revs []string
		re := regexp.MustCompile(`^m1_policy_bundle_info\{revision="([^"]+)"\}$`)
		for series, v := range s.metrics(t) {
			if m := re.FindStringSubmatch(series); m != nil && v == 1 {
				revs = append(revs, m[1])
			}
		}
		return revs
	}
	type sample struct{ instance, revision string }
	var drift, converged []sample
	for _, s := range []*sidecar{a, b} {
		for _, r := range revisions(s) {
			drift = append(drift, sample{s.AdminAddr, r})
		}
	}
	sourcetest.WriteDir(t, dirB, revisionPolicy("v1", true))
	b.decides(t, allow, checkTimeout)
	for _, s := range []*sidecar{a, b} {
		for _, r := range revisions(s) {
			converged = append(converged, sample{s.AdminAddr, r})
		}
	}
	if len(drift) != 2 || drift[0].revision == drift[1].revision || len(converged) != 2 || converged[0].revision != converged[1].revision {
		t.Fatalf("scraped revisions: drifting %v, converged %v; want two different, then two equal", drift, converged)
	}

	// 0-30m: the drifting scrape; 30-60m: the converged one.
	values := map[sample]string{}
	for _, s := range drift {
		values[s] = "1x30 _x30"
	}
	for _, s := range converged {
		if values[s] != "" {
			values[s] = "1x60"
		} else {
			values[s] = "_x30 1x30"
		}
	}
	var series strings.Builder
	for s, v := range values {
		fmt.Fprintf(&series, "      - series: 'm1_policy_bundle_info{job=\"m1-authz\",namespace=\"tools\",app=\"fs-tools\",instance=\"%s\",revision=\"%s\"}'\n        values: '%s'\n", s.instance, s.revision, v)
	}
	rules, err := filepath.Abs(filepath.Join("..", "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`rule_files: [%q]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
%s    alert_rule_test:
      - eval_time: 10m
        alertname: M1PolicyRevisionsDiffer
        exp_alerts: []
      - eval_time: 20m
        alertname: M1PolicyRevisionsDiffer
        exp_alerts:
          - exp_labels: {severity: warning, namespace: tools, app: fs-tools}
            exp_annotations:
              summary: "the sidecars of fs-tools in tools run different policy revisions"
              description: "A rollout has not finished, or some sidecars did not reload: the same call may be decided differently by different pods."
              runbook_url: "https://github.com/m1-agent/m1/blob/main/docs/RUNBOOKS.md#m1policyrevisionsdiffer"
      - eval_time: 55m
        alertname: M1PolicyRevisionsDiffer
        exp_alerts: []
`, rules, series.String())
	file := filepath.Join(t.TempDir(), "drift_test.yml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "test", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s\n%s", err, out, doc)
	}
}
