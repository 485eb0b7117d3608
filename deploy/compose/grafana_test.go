package compose_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/m1-agent/m1/deploy/deploytest"
)

// grafanaVars stand in for the variables Grafana expands in a query before
// Prometheus parses it.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$__interval", "15s", "$__range", "1h")

// TestGrafanaProvisioning: the data source is the compose Prometheus, and
// the dashboards provider reads the directory compose mounts.
func TestGrafanaProvisioning(t *testing.T) {
	p, _ := loadExample(t)
	g, err := p.GetService("grafana")
	if err != nil {
		t.Fatal(err)
	}
	prov := mountOf(g, "/etc/grafana/provisioning")
	if prov == nil || prov.Source != absPath(t, "grafana/provisioning") {
		t.Fatalf("grafana: provisioning mount %+v, want grafana/provisioning at /etc/grafana/provisioning", prov)
	}
	var ds struct {
		Datasources []struct {
			Name, UID, Type, URL string
		} `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" || ds.Datasources[0].UID != datasourceUID {
		t.Errorf("data sources = %+v, want one prometheus at http://prometheus:9090 with uid %s", ds.Datasources, datasourceUID)
	}
	var dp struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/m1.yaml", &dp)
	if len(dp.Providers) != 1 || dp.Providers[0].Type != "file" {
		t.Fatalf("dashboard providers = %+v, want one of type file", dp.Providers)
	}
	dir := mountOf(g, dp.Providers[0].Options.Path)
	if dir == nil || dir.Source != absPath(t, "grafana/dashboards") {
		t.Errorf("dashboards provider reads %q; compose mounts grafana/dashboards there? %+v", dp.Providers[0].Options.Path, dir)
	}
	if home := env0(g, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"); !strings.HasPrefix(home, dp.Providers[0].Options.Path+"/") {
		t.Errorf("grafana: home dashboard %q is not one of the provisioned ones", home)
	}
}

// datasourceUID is the provisioned Prometheus data source the dashboards name.
const datasourceUID = "m1-prometheus"

// TestGrafanaDashboards decodes each dashboard strictly into the Grafana
// Foundation SDK's types (a misspelt or misplaced field fails, as the
// alert rules' strict decoding does), validates it, and checks every
// query: Prometheus's own PromQL parser accepts it and it names only
// metrics M1 registers.
func TestGrafanaDashboards(t *testing.T) {
	plugins.RegisterDefaultPlugins() // the panel and query types: timeseries, stat, prometheus
	files, _ := filepath.Glob("grafana/dashboards/*.json")
	if len(files) == 0 {
		t.Fatal("no dashboards in grafana/dashboards")
	}
	known := deploytest.RegisteredMetrics(t)
	p := parser.NewParser(parser.Options{})
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Strict decoding finds unknown, misplaced and missing fields; its
		// result is not kept, because on success the SDK's strict decoders
		// drop panels and queries (see sdkErr). The lenient decode is walked.
		var strict, d dashboard.Dashboard
		if err := sdkErr(strict.UnmarshalJSONStrict(raw)); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := d.Validate(); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		if d.Uid == nil || *d.Uid == "" || d.Title == nil || *d.Title == "" {
			t.Errorf("%s: want a uid and a title (provisioning and links rely on the uid)", f)
		}
		ids := map[uint32]bool{}
		queries := 0
		for _, pr := range d.Panels {
			if pr.RowPanel != nil {
				continue
			}
			panel := pr.Panel
			if panel == nil {
				t.Errorf("%s: a panel that is neither a panel nor a row", f)
				continue
			}
			title := "?"
			if panel.Title != nil {
				title = *panel.Title
			}
			if panel.Id == nil || ids[*panel.Id] {
				t.Errorf("%s: panel %q: want a unique id", f, title)
			} else {
				ids[*panel.Id] = true
			}
			if panel.Datasource == nil || panel.Datasource.Uid == nil || *panel.Datasource.Uid != datasourceUID {
				t.Errorf("%s: panel %q: data source %+v, want uid %s (provisioned)", f, title, panel.Datasource, datasourceUID)
			}
			if len(panel.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", f, title)
			}
			for _, target := range panel.Targets {
				q, ok := target.(*prometheus.Dataquery)
				if !ok {
					t.Errorf("%s: panel %q: query %T, want a Prometheus query", f, title, target)
					continue
				}
				queries++
				expr, err := p.ParseExpr(grafanaVars.Replace(q.Expr))
				if err != nil {
					t.Errorf("%s: panel %q: %q: %v", f, title, q.Expr, err)
					continue
				}
				for _, name := range deploytest.UnknownMetrics(expr, known) {
					t.Errorf("%s: panel %q uses %s, which M1 does not register", f, title, name)
				}
			}
		}
		if queries < 10 {
			t.Errorf("%s: %d queries; the decode found too few", f, queries)
		}
	}
}

// sdkErr undoes a typed nil: the SDK's generated UnmarshalJSONStrict
// methods (v0.0.22) end with `return errs`, a nil cog.BuildErrors, which is
// a non-nil error; their callers inside the SDK then drop the panel or
// query they decoded, while real errors are reported as they should be.
func sdkErr(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
