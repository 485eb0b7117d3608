package loadtest

import (
	"fmt"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/bench"
)

// adviseScenario writes concrete advice for each figure that missed its
// target: what the processes' CPU (on this machine's cpus) and the profile
// say is the limit, and what to change.
func adviseScenario(s *Scenario, cpus int) {
	// The most any one sidecar and the load generator used in a phase.
	var sidecarCores, genCores float64
	for _, p := range s.Processes {
		switch {
		case strings.Contains(p.Name, "m1-authz"):
			sidecarCores = max(sidecarCores, p.Cores)
		case strings.Contains(p.Name, "load generator"):
			genCores = max(genCores, p.Cores)
		}
	}
	hot, share := s.Profile.hotspot()
	for _, f := range s.Figures {
		if f.Met || f.Cmp == "" {
			continue
		}
		var a []string
		if f.Load != nil && f.Load.Errors > 0 {
			a = append(a, fmt.Sprintf("%d of %d calls failed (%s): fix those first; a failing call is not a fast one.",
				f.Load.Errors, f.Load.Calls, strings.Join(f.Load.ErrorTop, "; ")))
		}
		if b, ok := boundOf(s, f); ok {
			a = append(a, b.advice(cpus, f.Target))
		} else if genCores > 0 && genCores+sidecarCores > 0.8*float64(cpus) {
			a = append(a, fmt.Sprintf("the machine was saturated: the load generator took %.1f of %d cores and m1-authz %.1f. Measure with the load generator on another machine (m1 loadtest --target) or on more cores before concluding that m1-authz is slow.",
				genCores, cpus, sidecarCores))
		}
		switch {
		case strings.Contains(f.Name, "fresh approval"):
			a = append(a, "every fresh approval costs an Ed25519 verification and a durable single-use record (a group commit: one SQLite transaction and fsync per group, or a Redis round trip). Give the store a fast local disk (M1_DATA_DIR on SSD, not network storage), or share state through Redis (REDIS_URL), and scale out: throughput is per core.")
		case strings.Contains(f.Name, "cacheable"):
			a = append(a, "a cached check costs the cache lookup, gRPC and the audit append (the largest part): keep M1_AUDIT on but give the audit store a fast disk; check that the policy is cacheable (/health, checks.policy) and the hit rate (m1_policy_cache_hits_total).")
		case strings.Contains(f.Name, "grant"):
			a = append(a, "a reused grant is verified once (verified-token cache); its uses are counted durably, in blocks when the store is the sidecar's own SQLite, one commit per use with PostgreSQL or a Redis round trip per use: check that the grant is not re-minted per call (each new grant starts counting one use at a time), keep the audit store on a fast disk (its append is a large share of a check), and scale out: throughput is per core.")
		case strings.Contains(f.Name, "hit rate"):
			a = append(a, "the cache hit rate is low: check /health's policy check (decision_cache on; a policy that reads time or http.send is not cacheable), raise M1_CACHE_SIZE if it is full, and invalidate less often (flush after a bundle change only when needed).")
		case strings.Contains(f.Name, "decisions/s"):
			a = append(a, "decisions/s below target: misses cost a Rego evaluation each; raise M1_CACHE_SIZE/M1_CACHE_TTL, keep the policy cacheable, and with Redis as L2 leave M1_CACHE_L2_MODE=auto (it reads Redis only when that is faster than evaluating).")
		case strings.Contains(f.Name, "runs that completed"):
			a = append(a, "agent runs failed: read the failures in the table (a deny code from m1-authz, a proposal that expired, an approval refused) and the orchestrator's log; raise M1_DISPATCH_TIMEOUT if tool calls time out under load.")
		case strings.Contains(f.Name, "/metrics"):
			size := ""
			if f.Load != nil {
				if b, ok := f.Load.Extra["bytes"]; ok {
					size = fmt.Sprintf(" (%v bytes here)", b)
				}
			}
			a = append(a, "/metrics is slow under load: the scrape competes with checks for the cores, and a label with many values (per-agent or per-tool series) makes every scrape bigger"+size+"; give the sidecar CPU headroom, scrape less often, or drop such labels with metric_relabel_configs.")
		}
		if hot != "" && strings.HasPrefix(f.Name, s.Profile.Phase) { // a profile of another phase says nothing of this one
			a = append(a, fmt.Sprintf("the CPU profile's largest known part is %s at %.0f%% of the sidecar's samples; its top functions are in the profile table below.", hot, share))
		}
		s.Advice = append(s.Advice, f.Name+": "+strings.Join(a, " "))
	}
}

// ratioSuffix ends the name of an approvals figure that compares m1-authz
// with the no-op server.
const ratioSuffix = ": m1-authz / no-op"

// cpuBound is what the processes of one comparison spent per call: the
// sidecars (m1: all their CPU during the rounds of both targets, since what
// they do after m1-authz's rounds, such as the audit appends, is for its
// calls, over m1-authz's calls) and the load generator during m1-authz's
// rounds (gen); the load generator and no-op server (its process, or the
// load generator's when in-process) together during the no-op server's
// rounds (noop); and how busy the cores were during
// m1-authz's rounds (cores).
type cpuBound struct {
	m1, gen, noop time.Duration
	cores         float64
}

// boundOf reads the cpuBound of a figure comparing m1-authz with the no-op
// server from its phase's processes' rounds.
func boundOf(s *Scenario, f Figure) (cpuBound, bool) {
	phase, ok := strings.CutSuffix(f.Name, ratioSuffix)
	if !ok || f.Load == nil || f.Load.Calls == 0 {
		return cpuBound{}, false
	}
	var b cpuBound
	var sidecarCPU float64
	var sidecars, gens int
	for _, p := range s.Processes {
		if !strings.HasPrefix(p.Name, phase+": ") {
			continue
		}
		gen := strings.Contains(p.Name, "load generator")
		noop := strings.HasSuffix(p.Name, ": "+noopProcName)
		if !gen && !noop && len(p.Rounds) > 0 {
			sidecars++
		}
		for _, r := range p.Rounds {
			if r.Target == bench.TargetM1 {
				b.cores += r.Cores
			}
			switch {
			case r.Target == bench.TargetNoop && (gen || noop):
				b.noop += r.CPUPerCall.Std()
			case noop: // idle while m1-authz is measured
			case !gen:
				sidecarCPU += r.CPUSec
			case r.Target == bench.TargetM1:
				b.gen, gens = r.CPUPerCall.Std(), gens+1
			}
		}
	}
	b.m1 = time.Duration(sidecarCPU / float64(f.Load.Calls) * float64(time.Second))
	return b, sidecars > 0 && gens == 1 && b.noop > 0 && b.gen+b.m1 > 0
}

// advice says what the CPU per call bounds the ratio at, on shared cores.
func (b cpuBound) advice(cpus int, target float64) string {
	bound := float64(b.noop) / float64(b.gen+b.m1)
	s := fmt.Sprintf("per check, m1-authz used %s of CPU (all of it, in the rounds of both targets, over its calls) and the load generator %s; per no-op check the load generator and the no-op server together used %s. With all of them on the same %d cores, the CPU alone bounds the ratio at %s / (%s + %s) = %.2f×: to go faster, m1-authz must spend less CPU per check (the profile below says where it goes), or run on cores of its own (m1 loadtest --target).",
		micros(b.m1), micros(b.gen), micros(b.noop), cpus, micros(b.noop), micros(b.gen), micros(b.m1), bound)
	if target > 0 { // at the target N / (G + M) = target, so M = N / target - G
		if allowed := time.Duration(float64(b.noop)/target) - b.gen; allowed > 0 && allowed < b.m1 {
			s += fmt.Sprintf(" For %.2f× on these cores m1-authz may spend at most %s per check, %s less than now.", target, micros(allowed), micros(b.m1-allowed))
		}
	}
	if busy := b.cores / float64(cpus); busy < 0.9 {
		s += fmt.Sprintf(" the cores were only %.0f%% busy during m1-authz's rounds: part of the time went in waiting (the disk's fsync, locks), not in CPU.", 100*busy)
	}
	return s
}

// micros prints d in whole microseconds.
func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}
