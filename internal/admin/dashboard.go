package admin

import (
	"context"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/store"
)

// Runs listed by /api/m1/dashboard/runs: the default and the most.
const (
	DefaultRunsLimit = 50
	MaxRunsLimit     = 200
)

// DashboardAPI serves the dashboard's JSON documents that are more than a
// snapshot of the process (mount it behind RequireToken): metrics, summed
// up from the Prometheus registry, and the runs and LLM costs that
// m1-orchestrator records in the store the audit trail shares.
type DashboardAPI struct {
	Gatherer prometheus.Gatherer
	// Records returns the store of runs and costs; its error (audit off,
	// store unreachable) is answered 503 store_unavailable with the
	// error's text as the reason.
	Records func(ctx context.Context) (store.Records, error)
	Now     func() time.Time
}

// recordsTimeout bounds one dashboard read of the store, opening it
// included.
const recordsTimeout = 5 * time.Second

// Routes returns the ServeMux patterns and handlers of the API.
func (a *DashboardAPI) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /api/m1/dashboard/metrics": http.HandlerFunc(a.metrics),
		"GET /api/m1/dashboard/runs":    http.HandlerFunc(a.runs),
		"GET /api/m1/dashboard/costs":   http.HandlerFunc(a.costs),

		"GET /api/m1/dashboard/proposals":      http.HandlerFunc(a.pending),
		"GET /api/m1/dashboard/proposals/{id}": http.HandlerFunc(a.proposal),
	}
}

func (a *DashboardAPI) metrics(w http.ResponseWriter, r *http.Request) {
	s, err := SummarizeMetrics(a.Gatherer)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// RunsDocument is the /api/m1/dashboard/runs document.
type RunsDocument struct {
	Limit int         `json:"limit"`
	Runs  []store.Run `json:"runs"` // newest first
}

func (a *DashboardAPI) runs(w http.ResponseWriter, r *http.Request) {
	limit := DefaultRunsLimit
	if q := r.URL.Query().Get("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 1 || n > MaxRunsLimit {
			WriteError(w, http.StatusBadRequest, "bad_request", "limit must be an integer from 1 to "+strconv.Itoa(MaxRunsLimit))
			return
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, ok := a.records(ctx, w)
	if !ok {
		return
	}
	runs, err := rec.Runs(ctx, store.RunFilter{Limit: limit})
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "store_unavailable", "list runs: "+err.Error())
		return
	}
	if runs == nil {
		runs = []store.Run{}
	}
	writeJSON(w, http.StatusOK, RunsDocument{Limit: limit, Runs: runs})
}

// CostsDocument is the /api/m1/dashboard/costs document: LLM cost by agent
// and model since a time, and the sum of the rows.
type CostsDocument struct {
	Since time.Time       `json:"since"`
	Rows  []store.CostRow `json:"rows"` // by agent, then model
	Total CostTotal       `json:"total"`
}

// CostTotal sums the rows of a CostsDocument.
type CostTotal struct {
	Calls int64       `json:"calls"`
	Usage store.Usage `json:"usage"`
}

func (a *DashboardAPI) costs(w http.ResponseWriter, r *http.Request) {
	since := a.Now().Add(-24 * time.Hour).Truncate(time.Second)
	if q := r.URL.Query().Get("since"); q != "" {
		t, err := time.Parse(time.RFC3339, q)
		if err != nil {
			WriteError(w, http.StatusBadRequest, "bad_request", "since must be an RFC 3339 time, e.g. 2026-01-02T15:04:05Z")
			return
		}
		since = t
	}
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, ok := a.records(ctx, w)
	if !ok {
		return
	}
	rows, err := rec.Costs(ctx, since)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "store_unavailable", "sum costs: "+err.Error())
		return
	}
	doc := CostsDocument{Since: since.UTC(), Rows: rows}
	if doc.Rows == nil {
		doc.Rows = []store.CostRow{}
	}
	for _, row := range rows {
		doc.Total.Calls += row.Calls
		doc.Total.Usage = doc.Total.Usage.Add(row.Usage)
	}
	writeJSON(w, http.StatusOK, doc)
}

func (a *DashboardAPI) records(ctx context.Context, w http.ResponseWriter) (store.Records, bool) {
	rec, err := a.Records(ctx)
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "store_unavailable", err.Error())
		return nil, false
	}
	return rec, true
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

func servePage(w http.ResponseWriter, r *http.Request) {
	serveEmbedded(w, "index.html")
}

func serveAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == "index.html" || !fs.ValidPath(name) {
		WriteError(w, http.StatusNotFound, "not_found", "no such admin endpoint")
		return
	}
	serveEmbedded(w, name)
}

func serveEmbedded(w http.ResponseWriter, name string) {
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
	_, _ = w.Write(b)
}
