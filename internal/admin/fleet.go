package admin

import (
	"cmp"
	"context"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Scopes of the dashboard: one m1-authz pod, or the fleet from
// m1-orchestrator (DESIGN §8).
const (
	ScopePod   = "pod"
	ScopeFleet = "fleet"
)

// PromStatus says whether the fleet's series come from Prometheus.
type PromStatus struct {
	Configured bool   `json:"configured"`
	URL        string `json:"url,omitempty"` // password hidden
	Error      string `json:"error,omitempty"`
}

// Meta is the /api/m1/dashboard/meta document: what the page shows and
// where its series come from.
type Meta struct {
	Scope      string     `json:"scope"`   // pod or fleet
	Service    string     `json:"service"` // m1-authz or m1-orchestrator
	Version    string     `json:"version"`
	History    string     `json:"history"` // the history's source, for a person
	Prometheus PromStatus `json:"prometheus"`
}

// FleetDocument is the /api/m1/dashboard/fleet document: every M1 process
// Prometheus scrapes, with its checks, deny rate, p99, cache hit rate and
// policy revision.
type FleetDocument struct {
	Prometheus PromStatus        `json:"prometheus"`
	Pods       []Pod             `json:"pods"`   // by service, then instance
	PromQL     map[string]string `json:"promql"` // the query of each column
}

// Pod is one scraped M1 process.
type Pod struct {
	Instance        string   `json:"instance"`
	Job             string   `json:"job"`
	Service         string   `json:"service"` // m1-authz (it has a policy revision) or m1-orchestrator
	Version         string   `json:"version"`
	Up              *bool    `json:"up"`
	Revision        string   `json:"revision"`
	ChecksPerSecond *float64 `json:"checks_per_second"`
	DenyRate        *float64 `json:"deny_rate"`
	P99Seconds      *float64 `json:"p99_seconds"`
	CacheHitRate    *float64 `json:"cache_hit_rate"`
}

// fleetQueries are the instant queries of the fleet document, by column.
var fleetQueries = map[string]string{
	"version":           `m1_build_info`,
	"up":                `up and on (instance) m1_build_info`,
	"revision":          `m1_policy_bundle_info == 1`,
	"checks_per_second": `sum by (instance) (rate(m1_policy_checks_total[1m]))`,
	"deny_rate":         `sum by (instance) (rate(m1_policy_checks_total{decision="deny"}[1m])) / sum by (instance) (rate(m1_policy_checks_total[1m]))`,
	"p99_seconds":       `histogram_quantile(0.99, sum by (instance, le) (rate(m1_check_duration_seconds_bucket[1m])))`,
	"cache_hit_rate":    `sum by (instance) (rate(m1_policy_cache_hits_total[1m])) / (sum by (instance) (rate(m1_policy_cache_hits_total[1m])) + sum by (instance) (rate(m1_policy_cache_misses_total[1m])))`,
}

// Fleet reads the fleet from Prometheus; nil Prom: not configured.
type Fleet struct {
	Prom *Prometheus
	Now  func() time.Time
}

// Status is the PromStatus of f.
func (f *Fleet) Status() PromStatus {
	if f == nil || f.Prom == nil {
		return PromStatus{}
	}
	return PromStatus{Configured: true, URL: f.Prom.String()}
}

// Read queries Prometheus for the fleet document.
func (f *Fleet) Read(ctx context.Context) FleetDocument {
	doc := FleetDocument{Prometheus: f.Status(), Pods: []Pod{}, PromQL: fleetQueries}
	if !doc.Prometheus.Configured {
		return doc
	}
	now := f.Now()
	results := map[string][]PromSample{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for col, q := range fleetQueries {
		wg.Go(func() {
			res, err := f.Prom.Query(ctx, q, now)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				doc.Prometheus.Error = err.Error()
				return
			}
			results[col] = res
		})
	}
	wg.Wait()
	pods := map[string]*Pod{}
	for _, s := range results["version"] {
		in := s.Labels["instance"]
		pods[in] = &Pod{Instance: in, Job: s.Labels["job"], Version: s.Labels["version"], Service: "m1-orchestrator"}
	}
	for col, res := range results {
		for _, s := range res {
			p := pods[s.Labels["instance"]]
			if p == nil {
				continue
			}
			switch col {
			case "up":
				if s.Value != nil {
					p.Up = ptr(*s.Value == 1)
				}
			case "revision":
				p.Revision, p.Service = s.Labels["revision"], "m1-authz"
			case "checks_per_second":
				p.ChecksPerSecond = s.Value
			case "deny_rate":
				p.DenyRate = s.Value
			case "p99_seconds":
				p.P99Seconds = s.Value
			case "cache_hit_rate":
				p.CacheHitRate = s.Value
			}
		}
	}
	for _, p := range pods {
		doc.Pods = append(doc.Pods, *p)
	}
	slices.SortFunc(doc.Pods, func(a, b Pod) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Instance, b.Instance))
	})
	return doc
}

// Documents are the fleet scope's fleet document and its cache and policy
// documents (the sidecars' caches and revisions, as Prometheus sees them).
func (f *Fleet) Documents() map[string]Document {
	return map[string]Document{
		"fleet": func(r *http.Request) (any, error) { return f.Read(r.Context()), nil },
		"cache": func(r *http.Request) (any, error) {
			doc := f.Read(r.Context())
			out := map[string]any{"scope": ScopeFleet, "prometheus": doc.Prometheus, "promql": doc.PromQL["cache_hit_rate"]}
			pods := []map[string]any{}
			for _, p := range doc.Pods {
				if p.Service == "m1-authz" {
					pods = append(pods, map[string]any{"instance": p.Instance, "cache_hit_rate": p.CacheHitRate})
				}
			}
			out["pods"] = pods
			return out, nil
		},
		"policy": func(r *http.Request) (any, error) {
			doc := f.Read(r.Context())
			byRev := map[string][]string{}
			for _, p := range doc.Pods {
				if p.Service == "m1-authz" {
					byRev[p.Revision] = append(byRev[p.Revision], p.Instance)
				}
			}
			revs := []map[string]any{}
			for rev, pods := range byRev {
				revs = append(revs, map[string]any{"revision": rev, "pods": pods})
			}
			slices.SortFunc(revs, func(a, b map[string]any) int { return cmp.Compare(a["revision"].(string), b["revision"].(string)) })
			return map[string]any{"scope": ScopeFleet, "prometheus": doc.Prometheus, "promql": doc.PromQL["revision"],
				"revisions": revs, "consistent": len(revs) <= 1}, nil
		},
	}
}
