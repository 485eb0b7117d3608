package sidecar

import (
	"net/http"
	"net/http/pprof"
)

// pprofRoutes are Go's runtime profiles (net/http/pprof) on the admin port,
// behind the admin token like every route but health and metrics: `m1
// loadtest` and operators take a CPU profile of a sidecar under load with
//
//	curl -H "Authorization: Bearer $M1_ADMIN_TOKEN" -o cpu.pprof \
//	  http://127.0.0.1:9192/debug/pprof/profile?seconds=10
//
// A profile runs for less than the admin server's write timeout (30s).
// /debug/pprof/cmdline is left out: the command line may carry secrets
// (--jwt-secret, --admin-token).
func pprofRoutes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /debug/pprof/":        http.HandlerFunc(pprof.Index), // the index and the named profiles: heap, goroutine, mutex, …
		"GET /debug/pprof/cmdline": http.NotFoundHandler(),
		"GET /debug/pprof/profile": http.HandlerFunc(pprof.Profile),
		"GET /debug/pprof/trace":   http.HandlerFunc(pprof.Trace),
		"GET /debug/pprof/symbol":  http.HandlerFunc(pprof.Symbol),
		"POST /debug/pprof/symbol": http.HandlerFunc(pprof.Symbol),
	}
}
