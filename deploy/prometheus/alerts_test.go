// Package prometheus_test checks the alerting rules in deploy/prometheus:
// the file's shape, each expression with Prometheus's own PromQL parser, the
// annotations as templates, that every m1_ metric they name is one M1
// registers (a rule on a misspelt metric never fires), and that every alert
// links its section of docs/RUNBOOKS.md. (Prometheus's rulefmt package would
// do the first three but drags in the Kubernetes client.) Then promtool, the
// real rule engine, runs alerts_test.yml: every alert fires on the series it
// is meant for and stays quiet on a healthy one.
package prometheus_test

import (
	"bytes"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/m1-agent/m1/deploy/deploytest"
	"github.com/m1-agent/m1/internal/testenv"
)

// runbookBase is where every alert's runbook_url points, followed by the
// anchor of the alert's section: the file on the default branch, so that a
// link in a page keeps working after the alert's version is gone.
const runbookBase = "https://github.com/m1-agent/m1/blob/main/docs/RUNBOOKS.md#"

// ruleFile is Prometheus's rule file format (the fields M1's rules use;
// decoding is strict, so a misspelt or misplaced field fails).
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// promFuncs names the functions Prometheus adds to alert templates (its
// template package), so that the parse knows them; promtool renders them.
var promFuncs = func() template.FuncMap {
	fm := template.FuncMap{}
	for _, name := range []string{"query", "first", "label", "value", "strvalue", "args", "reReplaceAll",
		"safeHtml", "match", "title", "toUpper", "toLower", "graphLink", "tableLink", "sortByLabel",
		"humanize", "humanize1024", "humanizeDuration", "humanizePercentage", "humanizeTimestamp",
		"toTime", "toDuration", "now", "pathPrefix", "externalURL", "parseDuration", "stripPort", "stripDomain"} {
		fm[name] = func(...any) any { return nil }
	}
	return fm
}()

// decodeStrict decodes a YAML file into v, refusing unknown fields.
func decodeStrict(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// alertNames are the alerts of alerts.yml, in order.
func alertNames(t *testing.T) []string {
	t.Helper()
	var rf ruleFile
	decodeStrict(t, "alerts.yml", &rf)
	var names []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
		}
	}
	return names
}

func TestAlertRules(t *testing.T) {
	var rf ruleFile
	decodeStrict(t, "alerts.yml", &rf)
	p := parser.NewParser(parser.Options{})
	known := deploytest.RegisteredMetrics(t)
	names := map[string]bool{}
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			n++
			if r.Alert == "" || names[r.Alert] || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %q: want a unique alert name, a severity label and a summary", r.Alert)
			}
			names[r.Alert] = true
			if r.For != "" {
				if _, err := model.ParseDuration(r.For); err != nil {
					t.Errorf("rule %q: for: %v", r.Alert, err)
				}
			}
			for k, text := range r.Annotations {
				// As Prometheus expands them: $labels and $value defined first.
				if _, err := template.New(k).Funcs(promFuncs).Parse("{{$labels := .Labels}}{{$value := .Value}}" + text); err != nil {
					t.Errorf("rule %q: annotation %s: %v", r.Alert, k, err)
				}
			}
			expr, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("rule %q: %v", r.Alert, err)
				continue
			}
			for _, name := range deploytest.UnknownMetrics(expr, known) {
				t.Errorf("rule %q uses %s, which M1 does not register", r.Alert, name)
			}
		}
	}
	if n < 10 {
		t.Errorf("alerts.yml has %d rules; the parse found too few", n)
	}
}

// TestAlertRunbooks: every alert has a runbook_url at runbookBase whose
// anchor is a heading of docs/RUNBOOKS.md, as GitHub makes anchors.
func TestAlertRunbooks(t *testing.T) {
	raw, err := os.ReadFile("../../docs/RUNBOOKS.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := deploytest.MarkdownAnchors(string(raw))
	var rf ruleFile
	decodeStrict(t, "alerts.yml", &rf)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			url := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(url, runbookBase)
			switch {
			case url == "":
				t.Errorf("alert %s has no runbook_url annotation", r.Alert)
			case !ok:
				t.Errorf("alert %s: runbook_url %q, want %s<anchor>", r.Alert, url, runbookBase)
			case !anchors[anchor]:
				t.Errorf("alert %s: runbook_url anchor #%s is no heading of docs/RUNBOOKS.md", r.Alert, anchor)
			}
		}
	}
}

// ruleTests is promtool's unit test file format (the fields M1's tests use).
type ruleTests struct {
	RuleFiles          []string `yaml:"rule_files"`
	EvaluationInterval string   `yaml:"evaluation_interval"`
	Tests              []struct {
		Name        string `yaml:"name"`
		Interval    string `yaml:"interval"`
		InputSeries []struct {
			Series string `yaml:"series"`
			Values string `yaml:"values"`
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpLabels      map[string]string `yaml:"exp_labels"`
				ExpAnnotations map[string]string `yaml:"exp_annotations"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// TestAlertRulesPromtool runs alerts_test.yml with promtool, after checking
// that it covers every alert: each fires in some case, and each is seen
// quiet, either by a case that expects no alert or by an input series of a
// test group that no expected alert covers. (promtool compares the alerts
// that fire with the expected ones exactly, so a healthy series beside a
// firing one that fired too would fail it.) An expectation for an alert
// that does not exist would pass silently in promtool, so it fails here.
func TestAlertRulesPromtool(t *testing.T) {
	var rt ruleTests
	decodeStrict(t, "alerts_test.yml", &rt)
	alerts := alertNames(t)
	fires, quiet := map[string]bool{}, map[string]bool{}
	p := parser.NewParser(parser.Options{})
	for _, tc := range rt.Tests {
		var series []map[string]string
		for _, in := range tc.InputSeries {
			ls, err := p.ParseMetric(in.Series)
			if err != nil {
				t.Fatalf("test %q: series %s: %v", tc.Name, in.Series, err)
			}
			series = append(series, ls.Map())
		}
		covered := make([]bool, len(series))
		for _, c := range tc.AlertRuleTest {
			if !slices.Contains(alerts, c.Alertname) {
				t.Errorf("test %q expects %s, which alerts.yml does not have", tc.Name, c.Alertname)
			}
			if len(c.ExpAlerts) == 0 {
				quiet[c.Alertname] = true
			}
			for _, exp := range c.ExpAlerts {
				fires[c.Alertname] = true
				for i, s := range series {
					if matches(s, exp.ExpLabels) {
						covered[i] = true
					}
				}
			}
		}
		for i := range series {
			if !covered[i] {
				for _, c := range tc.AlertRuleTest {
					quiet[c.Alertname] = true
				}
			}
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("alerts_test.yml never expects %s to fire", a)
		}
		if !quiet[a] {
			t.Errorf("alerts_test.yml never shows %s quiet: add a healthy series or a case with exp_alerts: []", a)
		}
	}

	promtool := testenv.RequireBinary(t, "promtool", "apt-get install -y prometheus (make test and .ci/run do this when they can)")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// matches reports whether an expected alert may come from an input series:
// no label they both carry differs. (The alert's own labels, severity, are
// not on the series; labels aggregated away are not on the alert, and an
// alert that sums everything may come from any series.)
func matches(series, alert map[string]string) bool {
	for k, v := range alert {
		if sv, ok := series[k]; ok && sv != v {
			return false
		}
	}
	return true
}

// TestDocQueries: the PromQL of the runbooks and the deployment guide
// (```promql blocks) parses, and every m1_ metric it names is one M1
// registers, so that a query pasted at 3 a.m. does not come back empty for
// a typo.
func TestDocQueries(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	known := deploytest.RegisteredMetrics(t)
	n := 0
	for _, path := range []string{"../../docs/RUNBOOKS.md", "../../docs/DEPLOY.md"} {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for i, block := range strings.Split(string(raw), "```promql\n")[1:] {
			query, _, ok := strings.Cut(block, "```")
			if !ok {
				t.Fatalf("%s: promql block %d is not closed", path, i+1)
			}
			n++
			expr, err := p.ParseExpr(query)
			if err != nil {
				t.Errorf("%s: promql block %d: %v\n%s", path, i+1, err, query)
				continue
			}
			for _, name := range deploytest.UnknownMetrics(expr, known) {
				t.Errorf("%s: promql block %d uses %s, which M1 does not register", path, i+1, name)
			}
		}
	}
	if n < 10 {
		t.Errorf("found %d promql blocks; the extraction is broken", n)
	}
}
