package cli

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/m1-agent/m1/internal/store"
)

// outcomeSource is the Detail source of m1-authz's result events (from
// Envoy's access log); m1-orchestrator's results have another.
const outcomeSource = "envoy_access_log"

// call is one row of export --format calls: a decision and what came of it,
// or a dispatch result that matches no decision.
type call struct {
	time       time.Time
	decisionID string // "-" for a dispatch result that matches no decision
	tool       string
	principal  string
	decision   string // allow | deny, "-" when the decision is not in the export
	reason     string
	outcome    *store.Event // m1-authz's result (Envoy's access log)
	dispatch   *store.Event // m1-orchestrator's result
}

// callsView gathers the events of an export by decision id, in the order
// their first event came (time order), and prints them side by side: the
// decision, the tool's outcome as Envoy saw it, and the orchestrator's
// dispatch result when there is one. A dispatch result that matches no
// decision of the export is a row of its own, with the decision's columns
// "-": a call made under a grant (whose decision names no proposal or run),
// a decision outside the export's window or filters. It holds the rows in
// memory: bound the export (--run, --since, --limit).
type callsView struct {
	rows       []*call
	byID       map[string]*call
	byProposal map[string]*call // the latest allowed decision of each proposal
}

func newCallsView() *callsView {
	return &callsView{byID: map[string]*call{}, byProposal: map[string]*call{}}
}

func (v *callsView) add(e store.Event) error {
	if e.Kind == store.KindResult && e.DecisionID == "" && e.ProposalID != "" {
		// The orchestrator's dispatch result when the tool's answer did
		// not carry the decision id: linked by its proposal, else a row
		// of its own.
		if c, ok := v.byProposal[e.ProposalID]; ok && c.dispatch == nil {
			c.dispatch = &e
			return nil
		}
		v.rows = append(v.rows, &call{time: e.Time, decisionID: "-", tool: e.Tool, principal: e.Principal, decision: "-", dispatch: &e})
		return nil
	}
	if e.DecisionID == "" || (e.Kind != store.KindDecision && e.Kind != store.KindResult) {
		return nil // proposals, approvals, LLM calls: not calls
	}
	c, ok := v.byID[e.DecisionID]
	if !ok {
		c = &call{time: e.Time, decisionID: e.DecisionID, tool: e.Tool, principal: e.Principal, decision: "-"}
		v.byID[e.DecisionID] = c
		v.rows = append(v.rows, c)
	}
	switch {
	case e.Kind == store.KindDecision:
		c.time, c.decision, c.reason = e.Time, e.Decision, e.Reason
		c.tool, c.principal = cmp.Or(e.Tool, c.tool), cmp.Or(e.Principal, c.principal)
		if e.ProposalID != "" && e.Decision == "allow" {
			v.byProposal[e.ProposalID] = c
		}
	case isAccessLogResult(e):
		c.outcome = &e
	default:
		c.dispatch = &e
	}
	return nil
}

// isAccessLogResult tells m1-authz's result events from the orchestrator's.
func isAccessLogResult(e store.Event) bool {
	var d struct {
		Source string `json:"source"`
	}
	return json.Unmarshal([]byte(e.Detail), &d) == nil && d.Source == outcomeSource
}

// print writes the table.
func (v *callsView) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tDECISION_ID\tTOOL\tPRINCIPAL\tDECISION\tREASON\tOUTCOME\tSTATUS\tTOOL_MS\tDISPATCH")
	for _, c := range v.rows {
		outcome, status, ms := "-", "-", "-"
		if o := c.outcome; o != nil {
			outcome = o.Decision
			if o.Reason != "" && o.Reason != "ok" {
				outcome += " (" + o.Reason + ")"
			}
			status = strconv.Itoa(o.Status)
			ms = strconv.FormatFloat(float64(o.LatencyMicros)/1000, 'f', 1, 64)
		} else if c.decision == "allow" && c.tool != "" {
			outcome = "none"
		}
		dispatch := "-"
		if d := c.dispatch; d != nil {
			dispatch = d.Decision
			if d.Status != 0 {
				dispatch += " " + strconv.Itoa(d.Status)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			c.time.UTC().Format(time.RFC3339), c.decisionID, dash(c.tool), dash(oneLine(c.principal)),
			c.decision, dash(c.reason), outcome, status, ms, dispatch)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table cell on one line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}
