package orchestratord

import (
	"flag"
	"net/http"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/orchestrator"
)

// GatewayOptions configure the approvals held for sidecars (DESIGN §10).
type GatewayOptions struct {
	// Token is the bearer token sidecars send (their M1_APPROVALS_TOKEN):
	// it opens POST /v1/proposals and POST /v1/claims and nothing else.
	// The admin token opens them too.
	Token string
	// MaxPending and PerMinute limit each principal's sidecar proposals
	// (0 takes orchestrator.GatewayLimits' defaults, 10 and 20).
	MaxPending int
	PerMinute  int
}

// bindGatewayFlags defines the flags of o.Gateway.
func (o *Options) bindGatewayFlags(fs *flag.FlagSet, env map[string]string) {
	g := &o.Gateway
	fs.StringVar(&g.Token, "approvals-token", g.Token, "bearer token sidecars send (their M1_APPROVALS_TOKEN): opens POST /v1/proposals and /v1/claims only (the admin token opens them too)")
	fs.IntVar(&g.MaxPending, "approvals-max-pending", g.MaxPending, "sidecar proposals of one principal that may wait for an operator at once; past it, filings are answered 429 rate_limited")
	fs.IntVar(&g.PerMinute, "approvals-per-minute", g.PerMinute, "new sidecar proposals one principal may file per minute (per orchestrator process)")
	env["approvals-token"] = "M1_APPROVALS_TOKEN"
	env["approvals-max-pending"] = "M1_APPROVALS_MAX_PENDING"
	env["approvals-per-minute"] = "M1_APPROVALS_PER_MINUTE"
}

func (g GatewayOptions) limits() orchestrator.GatewayLimits {
	return orchestrator.GatewayLimits{MaxPending: g.MaxPending, PerMinute: g.PerMinute}
}

// gatewayRoutes serves the sidecars' endpoints behind their own token,
// when one is set: the routes the admin handler serves behind the admin
// token go through the same handler.
func (s *Server) gatewayRoutes(mux *http.ServeMux, adminHandler http.Handler) {
	if s.opts.Gateway.Token == "" {
		return
	}
	sidecars := admin.RequireToken(s.opts.Gateway.Token, s.svc.GatewayHandler())
	either := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if admin.HasToken(r, s.opts.AdminToken) {
			adminHandler.ServeHTTP(w, r)
			return
		}
		sidecars.ServeHTTP(w, r)
	})
	mux.Handle("POST "+gateway.PathProposals, either)
	mux.Handle("POST "+gateway.PathClaims, either)
}

// registryPolicy is the dashboard's policy document on the orchestrator:
// the tool registry it holds (the sidecars evaluate the policy).
func registryPolicy(reg orchestrator.Registry) func() any {
	return func() any {
		tools := map[string]any{}
		for name, spec := range reg {
			tools[name] = map[string]any{"risk": spec.Risk, "requires_approval": spec.RequiresApproval == nil || *spec.RequiresApproval}
		}
		return map[string]any{"revision": "(the sidecars evaluate the policy)", "decision_cache": false,
			"cache_off_reason": "not on the orchestrator", "tools": tools}
	}
}
