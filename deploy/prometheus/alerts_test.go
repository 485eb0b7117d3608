// Package prometheus_test checks the alerting rules in deploy/prometheus:
// the file's shape, each expression with Prometheus's own PromQL parser, the
// annotations as templates, and that every m1_ metric they name is one M1
// registers, since a rule on a misspelt metric never fires. (Prometheus's
// rulefmt package would do the first three but drags in the Kubernetes
// client.)
package prometheus_test

import (
	"bytes"
	"os"
	"testing"
	"text/template"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/m1-agent/m1/deploy/deploytest"
)

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

func TestAlertRules(t *testing.T) {
	raw, err := os.ReadFile("alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
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
				if _, err := template.New(k).Parse("{{$labels := .Labels}}{{$value := .Value}}" + text); err != nil {
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
