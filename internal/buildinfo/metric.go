package buildinfo

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetric registers m1_build_info{version,goversion,revision},
// always 1: which build each process runs, for dashboards and for joining
// onto other series (`* on (instance) group_left (version) m1_build_info`).
// Both servers register it. It fails if it is already registered on reg.
func RegisterMetric(reg prometheus.Registerer, version, revision string) error {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "m1_build_info",
		Help:        "The build this process runs (value 1): release version, Go version and source revision.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "revision": revision},
	})
	g.Set(1)
	return reg.Register(g)
}
