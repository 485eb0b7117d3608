package admin

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// Approval analytics (the Policy & Security tab): how operators decide the
// proposals agents make.
const (
	// RubberStampSeconds: an approval given this soon after the proposal
	// was made was not read (the rubber-stamp rate).
	RubberStampSeconds = 2
	// GrantMinRepeats: an agent approved this many times for the same
	// tool and the same arguments is a candidate for a grant.
	GrantMinRepeats = 3
	// MaxDecisions bounds the decisions one analysis reads; beyond it the
	// oldest of the window are left out (Truncated).
	MaxDecisions = 10000
	// autoApprover prefixes the Approver of proposals m1 approve
	// --auto-risk approved: no person decided them.
	autoApprover = "auto-risk:"
	// grantApprover prefixes the Approver of proposals a run's grant
	// approved (orchestrator.GrantApprover): decided when the grant was
	// signed, not when the proposal was made.
	grantApprover = "grant:"
)

// ApprovalsDocument is the /api/m1/dashboard/approvals document.
type ApprovalsDocument struct {
	Since        time.Time `json:"since"`
	Decided      int       `json:"decided"`       // proposals decided in the window
	Approved     int       `json:"approved"`      // by an operator
	AutoApproved int       `json:"auto_approved"` // by m1 approve --auto-risk
	Granted      int       `json:"granted"`       // by a run's grant
	Rejected     int       `json:"rejected"`
	Expired      int       `json:"expired"`
	Truncated    bool      `json:"truncated"` // more than MaxDecisions: the oldest left out
	// TimeToApproval is the distribution of the time from proposal to an
	// operator's approval.
	TimeToApproval  Distribution        `json:"time_to_approval"`
	RubberStamp     RubberStamp         `json:"rubber_stamp"`
	ByOperator      []OperatorApprovals `json:"by_operator"`      // most approvals first
	GrantCandidates []GrantCandidate    `json:"grant_candidates"` // most approvals first
}

// Distribution is a histogram of durations with a few quantiles (exact, from
// the samples; null without samples).
type Distribution struct {
	Count      int      `json:"count"`
	Buckets    []Bucket `json:"buckets"`
	P50Seconds *float64 `json:"p50_seconds"`
	P90Seconds *float64 `json:"p90_seconds"`
	MaxSeconds *float64 `json:"max_seconds"`
}

// Bucket counts the samples above the previous bucket's bound and at most
// LESeconds; the last bucket's LESeconds is null (no bound).
type Bucket struct {
	LESeconds *float64 `json:"le_seconds"`
	Count     int      `json:"count"`
}

// RubberStamp counts approvals given under ThresholdSeconds.
type RubberStamp struct {
	ThresholdSeconds float64  `json:"threshold_seconds"`
	Count            int      `json:"count"`
	Rate             *float64 `json:"rate"` // of operator approvals; null without any
}

// OperatorApprovals is one operator's approvals in the window.
type OperatorApprovals struct {
	Operator      string   `json:"operator"`
	Approvals     int      `json:"approvals"`
	UnderStamp    int      `json:"rubber_stamped"` // under RubberStampSeconds
	MedianSeconds *float64 `json:"median_seconds"`
}

// GrantCandidate is an agent approved GrantMinRepeats times or more for one
// tool with the same arguments: a grant would spare the operators.
type GrantCandidate struct {
	Agent      string    `json:"agent"`
	Tool       string    `json:"tool"`
	ArgsSHA256 string    `json:"args_sha256"`
	Approvals  int       `json:"approvals"`
	Operators  []string  `json:"operators"`
	LastAt     time.Time `json:"last_at"`
}

// approvalBounds are the buckets of the time to approval, in seconds.
var approvalBounds = []float64{RubberStampSeconds, 5, 15, 60, 300, 900, 3600}

// AnalyzeApprovals sums up decisions (as ProposalDecisions returns them).
func AnalyzeApprovals(since time.Time, decisions []store.ProposalDecision, truncated bool) ApprovalsDocument {
	doc := ApprovalsDocument{Since: since.UTC(), Truncated: truncated, ByOperator: []OperatorApprovals{}, GrantCandidates: []GrantCandidate{},
		RubberStamp: RubberStamp{ThresholdSeconds: RubberStampSeconds}}
	type grantKey struct{ agent, tool, args string }
	var waits []float64
	perOp := map[string][]float64{}
	grants := map[grantKey]*GrantCandidate{}
	for _, d := range decisions {
		doc.Decided++
		switch {
		case strings.HasPrefix(d.Approver, autoApprover):
			doc.AutoApproved++
			continue
		case strings.HasPrefix(d.Approver, grantApprover):
			doc.Granted++
			continue
		case d.Approver != "":
			doc.Approved++
		case d.Status == store.ProposalExpired:
			doc.Expired++
			continue
		default:
			doc.Rejected++
			continue
		}
		wait := max(0, d.DecidedAt.Sub(d.CreatedAt).Seconds())
		waits = append(waits, wait)
		perOp[d.Approver] = append(perOp[d.Approver], wait)
		k := grantKey{d.Agent, d.Tool, d.ArgsSHA256}
		g := grants[k]
		if g == nil {
			g = &GrantCandidate{Agent: d.Agent, Tool: d.Tool, ArgsSHA256: d.ArgsSHA256}
			grants[k] = g
		}
		g.Approvals++
		if !slices.Contains(g.Operators, d.Approver) {
			g.Operators = append(g.Operators, d.Approver)
		}
		if d.DecidedAt.After(g.LastAt) {
			g.LastAt = d.DecidedAt
		}
	}
	doc.TimeToApproval = distribution(waits, approvalBounds)
	doc.RubberStamp.Count = under(waits, RubberStampSeconds)
	if len(waits) > 0 {
		doc.RubberStamp.Rate = ptr(float64(doc.RubberStamp.Count) / float64(len(waits)))
	}
	for op, ws := range perOp {
		slices.Sort(ws)
		doc.ByOperator = append(doc.ByOperator, OperatorApprovals{Operator: op, Approvals: len(ws),
			UnderStamp: under(ws, RubberStampSeconds), MedianSeconds: ptr(rank(ws, 0.5))})
	}
	slices.SortFunc(doc.ByOperator, func(a, b OperatorApprovals) int {
		return cmp.Or(cmp.Compare(b.Approvals, a.Approvals), cmp.Compare(a.Operator, b.Operator))
	})
	for _, g := range grants {
		if g.Approvals >= GrantMinRepeats {
			slices.Sort(g.Operators)
			doc.GrantCandidates = append(doc.GrantCandidates, *g)
		}
	}
	slices.SortFunc(doc.GrantCandidates, func(a, b GrantCandidate) int {
		return cmp.Or(cmp.Compare(b.Approvals, a.Approvals), cmp.Compare(a.Agent, b.Agent), cmp.Compare(a.Tool, b.Tool), cmp.Compare(a.ArgsSHA256, b.ArgsSHA256))
	})
	return doc
}

func under(ws []float64, limit float64) int {
	n := 0
	for _, w := range ws {
		if w < limit {
			n++
		}
	}
	return n
}

// distribution buckets samples (seconds) by bounds, plus one unbounded
// bucket, with the exact p50, p90 and maximum.
func distribution(samples []float64, bounds []float64) Distribution {
	d := Distribution{Count: len(samples), Buckets: make([]Bucket, len(bounds)+1)}
	for i, b := range bounds {
		d.Buckets[i].LESeconds = ptr(b)
	}
	for _, s := range samples {
		i, _ := slices.BinarySearch(bounds, s) // the first bound >= s
		d.Buckets[i].Count++
	}
	if len(samples) == 0 {
		return d
	}
	sorted := slices.Sorted(slices.Values(samples))
	d.P50Seconds, d.P90Seconds, d.MaxSeconds = ptr(rank(sorted, 0.5)), ptr(rank(sorted, 0.9)), ptr(sorted[len(sorted)-1])
	return d
}

// rank is the q-quantile of sorted by the nearest-rank method.
func rank(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
