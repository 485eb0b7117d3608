package store

import "slices"

// PrunePlan is what one Prune call covers, read from its kinds. Backends
// use it; callers pass kinds to Store.Prune.
type PrunePlan struct {
	Events        bool     // prune audit events
	EventKinds    []string // only these kinds; nil means every kind
	Runs          bool
	ToolCalls     bool
	Proposals     bool
	RevokedTokens bool
}

// PlanPrune reads Prune's kinds: event kinds and Prune* targets; none means
// everything.
func PlanPrune(kinds []string) PrunePlan {
	if len(kinds) == 0 {
		return PrunePlan{Events: true, Runs: true, ToolCalls: true, Proposals: true, RevokedTokens: true}
	}
	var p PrunePlan
	all := false
	for _, k := range kinds {
		switch k {
		case PruneEvents:
			p.Events, all = true, true
		case PruneRuns:
			p.Runs = true
		case PruneToolCalls:
			p.ToolCalls = true
		case PruneProposals:
			p.Proposals = true
		case PruneRevokedTokens:
			p.RevokedTokens = true
		default:
			p.Events = true
			if !slices.Contains(p.EventKinds, k) {
				p.EventKinds = append(p.EventKinds, k)
			}
		}
	}
	if all {
		p.EventKinds = nil
	}
	return p
}
