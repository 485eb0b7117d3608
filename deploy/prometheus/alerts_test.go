// Package prometheus_test checks the alerting rules in deploy/prometheus:
// the file's shape, each expression with Prometheus's own PromQL parser, the
// annotations as templates, and that every m1_ metric they name is one M1
// registers, since a rule on a misspelt metric never fires. (Prometheus's
// rulefmt package would do the first three but drags in the Kubernetes
// client.)
package prometheus_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"text/template"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
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
	known := registeredMetrics(t)
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
			parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
				vs, ok := node.(*parser.VectorSelector)
				if !ok || !strings.HasPrefix(vs.Name, "m1_") {
					return nil
				}
				name := vs.Name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(name, suffix); ok && known[base] {
						name = base
					}
				}
				if !known[name] {
					t.Errorf("rule %q uses %s, which M1 does not register", r.Alert, vs.Name)
				}
				return nil
			})
		}
	}
	if n < 10 {
		t.Errorf("alerts.yml has %d rules; the parse found too few", n)
	}
}

// registeredMetrics are the m1_ names in the module's non-test Go source
// that are passed as a metric's Name.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`Name:\s*"(m1_[a-z0-9_]+)"|^\s*"(m1_[a-z0-9_]+)",\s*$`)
	known := map[string]bool{}
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(src), "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				known[m[1]+m[2]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"m1_policy_checks_total", "m1_audit_queue_depth", "m1_redis_connected", "m1_total_cost"} {
		if !known[must] {
			t.Fatalf("found no registration of %s in the source; the scan is broken (found %v)", must, known)
		}
	}
	return known
}
