package loadtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// Profile is the summary of a CPU profile taken from a sidecar under load:
// its top functions by their own time (flat) and with what they call
// (cumulative), as `go tool pprof -top` lists them.
type Profile struct {
	From string `json:"from"` // the sidecar's admin URL
	// Phase is the part of the scenario the profile was taken during
	// (a figure's name starts with it); "" = the scenario as a whole.
	Phase    string  `json:"phase,omitempty"`
	Seconds  float64 `json:"seconds"`
	SampleMS float64 `json:"sample_ms"` // CPU time sampled
	// Cores is the sampled CPU time over the profile's duration.
	Cores float64 `json:"cores"`
	Flat  []Func  `json:"top_flat"`
	Cum   []Func  `json:"top_cum"`
}

// Func is one function's share of a profile.
type Func struct {
	Name    string  `json:"name"`
	FlatPct float64 `json:"flat_pct"`
	CumPct  float64 `json:"cum_pct"`
}

// topFuncs is how many functions a Profile lists.
const topFuncs = 15

// fetchProfile takes a CPU profile of seconds from the sidecar's admin
// port (pprof behind the admin token) and summarises it.
func fetchProfile(ctx context.Context, adminURL, token string, seconds int) (*Profile, error) {
	u := adminURL + "/debug/pprof/profile?seconds=" + strconv.Itoa(seconds)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second+15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("cpu profile: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	p, err := profile.Parse(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	s := summarize(p)
	s.From = adminURL
	return s, nil
}

// summarize sums a CPU profile's samples by function: flat (the leaf
// frame's function) and cumulative (every function on the stack, once per
// sample).
func summarize(p *profile.Profile) *Profile {
	vi := len(p.SampleType) - 1 // cpu nanoseconds, after the sample count
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			vi = i
		}
	}
	flat, cum := map[string]int64{}, map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		if vi < 0 || vi >= len(s.Value) {
			continue
		}
		v := s.Value[vi]
		total += v
		seen := map[string]bool{}
		for li, loc := range s.Location {
			// A location's lines are innermost (inlined) first.
			for ln, line := range loc.Line {
				if line.Function == nil {
					continue
				}
				name := line.Function.Name
				if li == 0 && ln == 0 {
					flat[name] += v
				}
				if !seen[name] {
					seen[name] = true
					cum[name] += v
				}
			}
		}
	}
	out := &Profile{Seconds: float64(p.DurationNanos) / 1e9, SampleMS: float64(total) / 1e6}
	if p.DurationNanos > 0 {
		out.Cores = float64(total) / float64(p.DurationNanos)
	}
	pct := func(v int64) float64 {
		if total == 0 {
			return 0
		}
		return 100 * float64(v) / float64(total)
	}
	top := func(m map[string]int64) []Func {
		names := make([]string, 0, len(m))
		for n := range m {
			names = append(names, n)
		}
		slices.SortFunc(names, func(a, b string) int {
			if m[a] != m[b] {
				if m[a] > m[b] {
					return -1
				}
				return 1
			}
			return strings.Compare(a, b)
		})
		var fs []Func
		for _, n := range names {
			if len(fs) == topFuncs {
				break
			}
			fs = append(fs, Func{Name: n, FlatPct: pct(flat[n]), CumPct: pct(cum[n])})
		}
		return fs
	}
	out.Flat = top(flat)
	// The cumulative list without the frames every goroutine has at its
	// root (runtime.goexit, gRPC's server loop): they say nothing.
	for n := range cum {
		if isRootFrame(n) {
			delete(cum, n)
		}
	}
	out.Cum = top(cum)
	return out
}

func isRootFrame(name string) bool {
	switch name {
	case "runtime.goexit", "runtime.main", "main.main", "main.run":
		return true
	}
	return strings.HasPrefix(name, "google.golang.org/grpc.(*Server).") ||
		strings.HasSuffix(name, "._Authorization_Check_Handler")
}

// hotspot names the part of m1-authz a profile's cumulative list says
// takes the most CPU, among those advice is known for, with its share.
func (p *Profile) hotspot() (string, float64) {
	if p == nil {
		return "", 0
	}
	best, share := "", 0.0
	for _, f := range p.Cum {
		for _, h := range hotspots {
			if strings.Contains(f.Name, h.match) && f.CumPct > share {
				best, share = h.name, f.CumPct
			}
		}
	}
	return best, share
}

// hotspots are the parts of a check whose cost the advice names.
var hotspots = []struct{ match, name string }{
	{"approval.verificationKey.verify", "signature verification"},
	{"storestate.(*Store).commit", "the durable single-use commit (SQLite)"},
	{"audit.(*Recorder).flush", "audit appends (SQLite)"},
	{"open-policy-agent/opa/", "policy evaluation (Rego)"},
	{"runtime.gcBgMarkWorker", "garbage collection"},
	{"redis/go-redis", "Redis round trips"},
	{"promhttp.", "metrics scrapes"},
}
