package admin

import (
	"cmp"
	"context"
	"embed"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/store"
)

// Runs listed by /api/m1/dashboard/runs: the default and the most.
const (
	DefaultRunsLimit = 50
	MaxRunsLimit     = 200
)

// Bounds of what one document reads of the store.
const (
	maxWindowRuns     = 1000 // runs of the operations window
	maxPendingRead    = 1000 // pending proposals
	successRunsSample = 200  // completed runs for tokens per successful run
	costDays          = 30   // days of the cost trend
)

// DashboardAPI serves the dashboard's JSON documents that are more than a
// snapshot of the process (mount them with Options.Documents): metrics,
// summed up from the Prometheus registry, and the runs, proposals,
// approvals and LLM costs that m1-orchestrator records in the store the
// audit trail shares.
type DashboardAPI struct {
	Gatherer prometheus.Gatherer
	// Records returns the store of runs and costs; its error (audit off,
	// store unreachable) is answered 503 store_unavailable with the
	// error's text as the reason.
	Records func(ctx context.Context) (store.Records, error)
	Now     func() time.Time
	// Prometheus, when set (fleet scope), is the source of the tool
	// executions of the operations document; nil: this process's registry.
	Prometheus *Prometheus
}

// recordsTimeout bounds one dashboard read of the store, opening it
// included.
const recordsTimeout = 5 * time.Second

// Documents returns the API's documents by name.
func (a *DashboardAPI) Documents() map[string]Document {
	return map[string]Document{
		"metrics":    a.metrics,
		"runs":       a.runs,
		"costs":      a.costs,
		"operations": a.operations,
		"approvals":  a.approvals,

		"proposals":      a.pending,
		"proposals/{id}": a.proposal,
	}
}

func (a *DashboardAPI) metrics(r *http.Request) (any, error) {
	return SummarizeMetrics(a.Gatherer)
}

// RunsDocument is the /api/m1/dashboard/runs document.
type RunsDocument struct {
	Limit int         `json:"limit"`
	Runs  []store.Run `json:"runs"` // newest first
}

func badRequest(reason string) error {
	return &DocError{http.StatusBadRequest, "bad_request", reason}
}

func storeUnavailable(what string, err error) error {
	return &DocError{http.StatusServiceUnavailable, "store_unavailable", what + err.Error()}
}

func (a *DashboardAPI) runs(r *http.Request) (any, error) {
	limit := DefaultRunsLimit
	if q := r.URL.Query().Get("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > MaxRunsLimit {
			return nil, badRequest("limit must be an integer from 1 to " + strconv.Itoa(MaxRunsLimit))
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, err := a.records(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := rec.Runs(ctx, store.RunFilter{Limit: limit})
	if err != nil {
		return nil, storeUnavailable("list runs: ", err)
	}
	if runs == nil {
		runs = []store.Run{}
	}
	return RunsDocument{Limit: limit, Runs: runs}, nil
}

// CostsDocument is the /api/m1/dashboard/costs document: LLM cost by agent
// and model since a time and the sum of the rows, the trend by day, the
// month-end projection and the tokens a successful run takes.
type CostsDocument struct {
	Since      time.Time       `json:"since"`
	Rows       []store.CostRow `json:"rows"` // by agent, then model
	Total      CostTotal       `json:"total"`
	Days       []DayCost       `json:"days"` // the last 30 UTC days, oldest first, today included
	Projection Projection      `json:"projection"`
	// TokensPerSuccessfulRun is over the latest completed runs.
	TokensPerSuccessfulRun RunTokens `json:"tokens_per_successful_run"`
}

// CostTotal sums the rows of a CostsDocument.
type CostTotal struct {
	Calls int64       `json:"calls"`
	Usage store.Usage `json:"usage"`
}

// DayCost is one UTC day's LLM cost, by model and by agent.
type DayCost struct {
	Day     string             `json:"day"` // YYYY-MM-DD
	Calls   int64              `json:"calls"`
	CostUSD float64            `json:"cost_usd"`
	ByModel map[string]float64 `json:"by_model"`
	ByAgent map[string]float64 `json:"by_agent"`
}

// ProjectionMethod is how Projection is computed, as the page states it.
const ProjectionMethod = "linear: the month's cost so far, divided by the days elapsed (UTC, to the second), times the days in the month"

// Projection is the month-end LLM cost at the month's pace so far.
type Projection struct {
	Month          string  `json:"month"` // YYYY-MM, UTC
	MonthToDateUSD float64 `json:"month_to_date_usd"`
	DaysElapsed    float64 `json:"days_elapsed"`
	DaysInMonth    int     `json:"days_in_month"`
	ProjectedUSD   float64 `json:"projected_usd"`
	Method         string  `json:"method"`
}

// RunTokens is the mean usage of the latest completed runs (at most 200).
type RunTokens struct {
	Runs       int      `json:"runs"`
	MeanTokens *float64 `json:"mean_tokens"` // input + output + cache read + cache write; null without runs
	MeanUSD    *float64 `json:"mean_cost_usd"`
}

func (a *DashboardAPI) costs(r *http.Request) (any, error) {
	now := a.Now().UTC()
	since := now.Add(-24 * time.Hour).Truncate(time.Second)
	if q := r.URL.Query().Get("since"); q != "" {
		t, err := time.Parse(time.RFC3339, q)
		if err != nil {
			return nil, badRequest("since must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
		}
		since = t
	}
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, err := a.records(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := rec.Costs(ctx, since)
	if err != nil {
		return nil, storeUnavailable("sum costs: ", err)
	}
	doc := CostsDocument{Since: since.UTC(), Rows: rows, Days: []DayCost{}}
	if doc.Rows == nil {
		doc.Rows = []store.CostRow{}
	}
	for _, row := range rows {
		doc.Total.Calls += row.Calls
		doc.Total.Usage = doc.Total.Usage.Add(row.Usage)
	}

	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	first := today.AddDate(0, 0, 1-costDays)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	in, err := insights(rec)
	if err != nil {
		return nil, err
	}
	from := first
	if month.Before(from) {
		from = month
	}
	daily, err := in.DailyCosts(ctx, from)
	if err != nil {
		return nil, storeUnavailable("sum daily costs: ", err)
	}
	byDay := map[string]*DayCost{}
	for d := first; !d.After(today); d = d.AddDate(0, 0, 1) {
		doc.Days = append(doc.Days, DayCost{Day: d.Format(time.DateOnly), ByModel: map[string]float64{}, ByAgent: map[string]float64{}})
	}
	for i := range doc.Days {
		byDay[doc.Days[i].Day] = &doc.Days[i]
	}
	monthPrefix := month.Format("2006-01")
	p := Projection{Month: monthPrefix, DaysInMonth: month.AddDate(0, 1, -1).Day(), Method: ProjectionMethod}
	for _, c := range daily {
		if strings.HasPrefix(c.Day, monthPrefix) {
			p.MonthToDateUSD += c.Usage.CostUSD
		}
		if d := byDay[c.Day]; d != nil {
			d.Calls += c.Calls
			d.CostUSD += c.Usage.CostUSD
			d.ByModel[c.Model] += c.Usage.CostUSD
			d.ByAgent[c.Agent] += c.Usage.CostUSD
		}
	}
	p.DaysElapsed = now.Sub(month).Hours() / 24
	if p.DaysElapsed > 0 {
		p.ProjectedUSD = p.MonthToDateUSD / p.DaysElapsed * float64(p.DaysInMonth)
	}
	doc.Projection = p

	done, err := rec.Runs(ctx, store.RunFilter{Status: store.RunCompleted, Limit: successRunsSample})
	if err != nil {
		return nil, storeUnavailable("list completed runs: ", err)
	}
	if len(done) > 0 {
		var tokens, usd float64
		for _, run := range done {
			u := run.Usage
			tokens += float64(u.InputTokens + u.OutputTokens + u.CacheReadTokens + u.CacheWriteTokens)
			usd += u.CostUSD
		}
		n := float64(len(done))
		doc.TokensPerSuccessfulRun = RunTokens{Runs: len(done), MeanTokens: ptr(tokens / n), MeanUSD: ptr(usd / n)}
	}
	return doc, nil
}

// OperationsDocument is the /api/m1/dashboard/operations document: runs
// of the last 24 hours, tool executions, and the proposals waiting for an
// operator.
type OperationsDocument struct {
	Since          time.Time      `json:"since"`
	ActiveRuns     int            `json:"active_runs"` // runs in status running (at most 1000 counted)
	Runs           RunStats       `json:"runs"`
	ToolExecutions ToolExecutions `json:"tool_executions"`
	Pending        PendingStats   `json:"pending_proposals"`
}

// RunStats are the runs created since the document's Since.
type RunStats struct {
	Total    int            `json:"total"`
	ByStatus map[string]int `json:"by_status"`
	// SuccessRate is completed / (completed + failed + over_budget); null
	// before a run ended.
	SuccessRate *float64 `json:"success_rate"`
	// Duration is the distribution of the ended runs' durations.
	Duration  Distribution `json:"duration"`
	Truncated bool         `json:"truncated"` // more than 1000 runs: the oldest left out
}

// ToolExecutions are tool calls by tool and outcome: this process's
// m1_tool_executions_total, or the fleet's sidecars' increase over 24
// hours.
type ToolExecutions struct {
	Source string          `json:"source"` // process or prometheus
	PromQL string          `json:"promql,omitempty"`
	Error  string          `json:"error,omitempty"`
	Rows   []ToolExecution `json:"rows"` // by tool, then outcome
}

// ToolExecution is one tool's count of one outcome.
type ToolExecution struct {
	Tool    string  `json:"tool"`
	Outcome string  `json:"outcome"`
	Count   float64 `json:"count"`
}

// PendingStats are the proposals waiting for an operator.
type PendingStats struct {
	Total  int              `json:"total"`
	ByRisk map[string]int   `json:"by_risk"`
	ByAge  []Bucket         `json:"by_age"` // age in seconds
	Oldest []PendingSummary `json:"oldest"` // at most 10, oldest first
}

// PendingSummary is one waiting proposal.
type PendingSummary struct {
	ID         string    `json:"id"`
	RunID      string    `json:"run_id"`
	Agent      string    `json:"agent"`
	Tool       string    `json:"tool"`
	Args       string    `json:"args"` // the arguments as proposed, cut to 200 bytes
	Risk       string    `json:"risk"`
	CreatedAt  time.Time `json:"created_at"`
	AgeSeconds float64   `json:"age_seconds"`
}

var (
	runBounds = []float64{1, 10, 60, 300, 900, 3600, 4 * 3600}
	ageBounds = []float64{60, 300, 900, 3600}
)

// sidecarsOnly keeps only the series of sidecars (the processes that
// exported m1_policy_bundle_info within window w, so that a pod replaced
// since still counts) in a vector: the tool-outcome metrics are the
// sidecars', from Envoy's access log, and m1-orchestrator counts its
// dispatches, which went through a sidecar, a second time under the same
// names.
func sidecarsOnly(w string) string {
	return ` and on (instance) last_over_time(m1_policy_bundle_info[` + w + `])`
}

var toolExecutionsPromQL = `sum by (tool, outcome) (increase(m1_tool_executions_total[24h])` + sidecarsOnly("24h") + `)`

func (a *DashboardAPI) operations(r *http.Request) (any, error) {
	now := a.Now().UTC()
	doc := OperationsDocument{Since: now.Add(-24 * time.Hour).Truncate(time.Second),
		Runs: RunStats{ByStatus: map[string]int{}}, Pending: PendingStats{ByRisk: map[string]int{}, Oldest: []PendingSummary{}}}
	doc.ToolExecutions = a.toolExecutions(r.Context(), now)
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, err := a.records(ctx)
	if err != nil {
		return nil, err
	}
	active, err := rec.Runs(ctx, store.RunFilter{Status: store.RunRunning, Limit: maxWindowRuns})
	if err != nil {
		return nil, storeUnavailable("list runs: ", err)
	}
	doc.ActiveRuns = len(active)
	runs, err := rec.Runs(ctx, store.RunFilter{Limit: maxWindowRuns + 1})
	if err != nil {
		return nil, storeUnavailable("list runs: ", err)
	}
	var durations []float64
	ended, completed := 0, 0
	for i, run := range runs {
		if i == maxWindowRuns {
			doc.Runs.Truncated = true
			break
		}
		if run.CreatedAt.Before(doc.Since) {
			break
		}
		doc.Runs.Total++
		doc.Runs.ByStatus[run.Status]++
		if run.Status != store.RunRunning {
			ended++
			if run.Status == store.RunCompleted {
				completed++
			}
			if !run.FinishedAt.IsZero() {
				durations = append(durations, max(0, run.FinishedAt.Sub(run.CreatedAt).Seconds()))
			}
		}
	}
	if ended > 0 {
		doc.Runs.SuccessRate = ptr(float64(completed) / float64(ended))
	}
	doc.Runs.Duration = distribution(durations, runBounds)

	pending, err := rec.Proposals(ctx, store.ProposalFilter{Status: store.ProposalPending, Limit: maxPendingRead})
	if err != nil {
		return nil, storeUnavailable("list proposals: ", err)
	}
	var ages []float64
	for _, p := range pending {
		doc.Pending.Total++
		risk := p.Risk
		if risk == "" {
			risk = "unknown"
		}
		doc.Pending.ByRisk[risk]++
		age := max(0, now.Sub(p.CreatedAt).Seconds())
		ages = append(ages, age)
		if len(doc.Pending.Oldest) < 10 {
			args := string(p.Args)
			if len(args) > 200 {
				args = strings.ToValidUTF8(args[:200], "") + "…"
			}
			doc.Pending.Oldest = append(doc.Pending.Oldest, PendingSummary{ID: p.ID, RunID: p.RunID, Agent: p.Agent, Tool: p.Tool,
				Args: args, Risk: p.Risk, CreatedAt: p.CreatedAt, AgeSeconds: age})
		}
	}
	doc.Pending.ByAge = distribution(ages, ageBounds).Buckets
	return doc, nil
}

// toolExecutions reads m1_tool_executions_total from Prometheus (fleet)
// or this process's registry.
func (a *DashboardAPI) toolExecutions(ctx context.Context, now time.Time) ToolExecutions {
	te := ToolExecutions{Source: "process", Rows: []ToolExecution{}}
	if a.Prometheus != nil {
		te.Source, te.PromQL = "prometheus", toolExecutionsPromQL
		res, err := a.Prometheus.Query(ctx, toolExecutionsPromQL, now)
		if err != nil {
			te.Error = err.Error()
			return te
		}
		for _, s := range res {
			if s.Value != nil && *s.Value > 0 {
				te.Rows = append(te.Rows, ToolExecution{Tool: s.Labels["tool"], Outcome: s.Labels["outcome"], Count: math.Round(*s.Value)})
			}
		}
	} else if mfs, err := a.Gatherer.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() != "m1_tool_executions_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				if v := m.GetCounter().GetValue(); v > 0 {
					te.Rows = append(te.Rows, ToolExecution{Tool: label(m, "tool"), Outcome: label(m, "outcome"), Count: v})
				}
			}
		}
	}
	slices.SortFunc(te.Rows, func(a, b ToolExecution) int {
		return cmp.Or(cmp.Compare(a.Tool, b.Tool), cmp.Compare(a.Outcome, b.Outcome))
	})
	return te
}

// Approval analytics windows: the default and the most, in days.
const (
	DefaultApprovalDays = 7
	MaxApprovalDays     = 90
)

func (a *DashboardAPI) approvals(r *http.Request) (any, error) {
	days := DefaultApprovalDays
	if q := r.URL.Query().Get("days"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > MaxApprovalDays {
			return nil, badRequest("days must be an integer from 1 to " + strconv.Itoa(MaxApprovalDays))
		}
		days = n
	}
	since := a.Now().UTC().AddDate(0, 0, -days).Truncate(time.Second)
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, err := a.records(ctx)
	if err != nil {
		return nil, err
	}
	in, err := insights(rec)
	if err != nil {
		return nil, err
	}
	ds, err := in.ProposalDecisions(ctx, since, MaxDecisions+1)
	if err != nil {
		return nil, storeUnavailable("list decided proposals: ", err)
	}
	truncated := len(ds) > MaxDecisions
	if truncated {
		ds = ds[:MaxDecisions]
	}
	return AnalyzeApprovals(since, ds, truncated), nil
}

func (a *DashboardAPI) records(ctx context.Context) (store.Records, error) {
	rec, err := a.Records(ctx)
	if err != nil {
		return nil, &DocError{http.StatusServiceUnavailable, "store_unavailable", err.Error()}
	}
	return rec, nil
}

func insights(rec store.Records) (store.Insights, error) {
	in, ok := rec.(store.Insights)
	if !ok {
		return nil, &DocError{http.StatusServiceUnavailable, "store_unavailable", fmt.Sprintf("store %T keeps no aggregates", rec)}
	}
	return in, nil
}

// The dashboard page: index.html at /, behind the token, and its scripts,
// styles and the vendored uPlot under /assets/, open (they are the same
// bytes as in the source and hold no data; a <script src> cannot carry a
// bearer token).
//
//go:embed dashboard
var dashboardFS embed.FS

// contentSecurityPolicy allows the page nothing but its own origin: no
// inline script or style, no other hosts, no framing.
const contentSecurityPolicy = "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// contentTypes are the types of the embedded files (not the system's MIME
// table, which could differ between hosts).
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

// setPageHeaders sets what the page and its assets add to the headers of
// every response (SecurityHeaders).
func setPageHeaders(h http.Header) {
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("Cache-Control", "no-store")
}

// servePage serves the dashboard page with status code.
func servePage(w http.ResponseWriter, code int) {
	serveEmbedded(w, "index.html", code)
}

func serveAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == "index.html" || !fs.ValidPath(name) {
		WriteError(w, http.StatusNotFound, "not_found", "no such admin endpoint")
		return
	}
	serveEmbedded(w, name, http.StatusOK)
}

func serveEmbedded(w http.ResponseWriter, name string, code int) {
	b, err := fs.ReadFile(dashboardFS, "dashboard/"+name)
	if err != nil {
		WriteError(w, http.StatusNotFound, "not_found", "no such admin endpoint")
		return
	}
	ct, ok := contentTypes[path.Ext(name)]
	if !ok {
		ct = "text/plain; charset=utf-8"
	}
	setPageHeaders(w.Header())
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
