package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/internal/store"
)

// maxRequestBytes bounds an API request body.
const maxRequestBytes = 1 << 20

// maxGoalBytes bounds a run's goal.
const maxGoalBytes = 64 << 10

// maxRunGrants bounds the grants one run may carry.
const maxRunGrants = 16

// Handler serves the API under /v1/ (see docs/ORCHESTRATOR.md). Errors are
// {"error": code, "reason": text}: 400 bad_request (and the token codes of
// an approval that does not fit its proposal, or of a grant that cannot
// serve a new run), 404 not_found, 409
// not_pending, 413 body_too_large, 503 store_unavailable or stopping.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/runs", s.handleCreateRun)
	mux.HandleFunc("GET /v1/runs", s.handleListRuns)
	mux.HandleFunc("GET /v1/runs/{id}", s.handleGetRun)
	mux.HandleFunc("GET /v1/proposals", s.handleListProposals)
	mux.HandleFunc("GET /v1/proposals/{id}", s.handleGetProposal)
	mux.HandleFunc("POST /v1/proposals/{id}/approval", s.handleApproval)
	mux.HandleFunc("POST /v1/proposals/{id}/rejection", s.handleRejection)
	mux.HandleFunc("GET /v1/costs", s.handleCosts)
	mux.Handle("POST "+gateway.PathProposals, s.GatewayHandler())
	mux.Handle("POST "+gateway.PathClaims, s.GatewayHandler())
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

func (s *Service) handleCreateRun(w http.ResponseWriter, r *http.Request) {
	if s.opts.Planner == nil { // whatever the body: this orchestrator cannot plan
		s.storeError(w, ErrNoPlanner)
		return
	}
	var req RunRequest
	if !decode(w, r, &req) {
		return
	}
	switch {
	case strings.TrimSpace(req.Goal) == "":
		writeError(w, http.StatusBadRequest, "bad_request", "goal is required")
		return
	case len(req.Goal) > maxGoalBytes || !utf8.ValidString(req.Goal):
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("goal must be valid UTF-8 of at most %d bytes", maxGoalBytes))
		return
	case !validAgent(req.Agent):
		writeError(w, http.StatusBadRequest, "bad_request", "agent is required: 1 to 128 of [A-Za-z0-9_.@:-]")
		return
	case req.BudgetUSD < 0:
		writeError(w, http.StatusBadRequest, "bad_request", "budget_usd must not be negative")
		return
	case len(req.Grants) > maxRunGrants:
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("at most %d grants per run", maxRunGrants))
		return
	case slices.ContainsFunc(req.Grants, func(g string) bool { return strings.TrimSpace(g) == "" }):
		writeError(w, http.StatusBadRequest, "bad_request", "grants must be grant tokens, not empty strings")
		return
	}
	d, err := s.StartRun(r.Context(), req)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, d)
}

func (s *Service) handleListRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := limitParam(w, q.Get("limit"))
	if !ok {
		return
	}
	status := q.Get("status")
	if status != "" && !runStatuses[status] {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("status %q: want running, completed, failed or over_budget", status))
		return
	}
	runs, err := s.opts.Records.Runs(r.Context(), store.RunFilter{Agent: q.Get("agent"), Status: status, Limit: limit})
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"runs": nonNil(runs)})
}

func (s *Service) handleGetRun(w http.ResponseWriter, r *http.Request) {
	d, err := s.detail(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

var runStatuses = map[string]bool{
	store.RunRunning: true, store.RunCompleted: true, store.RunFailed: true, store.RunOverBudget: true,
}

var proposalStatuses = map[string]bool{
	store.ProposalPending: true, store.ProposalApproved: true, store.ProposalRejected: true,
	store.ProposalExpired: true, store.ProposalExecuted: true, store.ProposalFailed: true,
	store.ProposalClaimed: true,
}

func (s *Service) handleListProposals(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	status := q.Get("status")
	if status != "" && !proposalStatuses[status] {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("status %q: want pending, approved, rejected, expired, executed, failed or claimed", status))
		return
	}
	limit, ok := limitParam(w, q.Get("limit"))
	if !ok {
		return
	}
	ps, err := s.opts.Records.Proposals(r.Context(), store.ProposalFilter{Status: status, RunID: q.Get("run"), Agent: q.Get("agent"), Limit: limit})
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"proposals": nonNil(ps)})
}

func (s *Service) handleGetProposal(w http.ResponseWriter, r *http.Request) {
	p, err := s.opts.Records.Proposal(r.Context(), r.PathValue("id"))
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Service) handleApproval(w http.ResponseWriter, r *http.Request) {
	var req ApprovalRequest
	if !decode(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Token) == "" {
		writeError(w, http.StatusBadRequest, "bad_request", "token is required")
		return
	}
	d, err := s.Approve(r.Context(), r.PathValue("id"), req.Token)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Service) handleRejection(w http.ResponseWriter, r *http.Request) {
	var req RejectionRequest
	if !decode(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Reason) == "" || !utf8.ValidString(req.Reason) {
		writeError(w, http.StatusBadRequest, "bad_request", "reason is required (UTF-8 text)")
		return
	}
	d, err := s.Reject(r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (s *Service) handleCosts(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_request", "since: want an RFC 3339 time")
			return
		}
		since = t
	}
	rows, err := s.opts.Records.Costs(r.Context(), since)
	if err != nil {
		s.storeError(w, err)
		return
	}
	out := Costs{Since: since, Rows: nonNil(rows)}
	for _, row := range rows {
		out.TotalUSD += row.Usage.CostUSD
	}
	writeJSON(w, http.StatusOK, out)
}

// storeError maps a Service or store error to its answer.
func (s *Service) storeError(w http.ResponseWriter, err error) {
	var te *TokenError
	switch {
	case errors.As(err, &te): // an approval or a run's grant that cannot serve
		s.log.Info("token refused", zap.String("error", te.Code), zap.String("reason", te.Reason))
		writeError(w, http.StatusBadRequest, te.Code, te.Reason)
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, errNotPending):
		writeError(w, http.StatusConflict, "not_pending", err.Error())
	case errors.Is(err, ErrNoPlanner):
		writeError(w, http.StatusServiceUnavailable, "no_planner", err.Error())
	case errors.Is(err, ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "stopping", "the orchestrator is shutting down; try again")
	default:
		s.log.Error("store", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "store_unavailable", "the store did not answer; try again")
	}
}

// decode reads a JSON request body strictly: one object, known fields. A
// body past maxRequestBytes (or the server's limit) is 413 body_too_large
// (admin.BodyTooLarge).
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	return decodeN(w, r, v, maxRequestBytes)
}

// decodeN is decode with a body limit of n bytes.
func decodeN(w http.ResponseWriter, r *http.Request, v any, n int64) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, n))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if !admin.BodyTooLarge(w, err) {
			writeError(w, http.StatusBadRequest, "bad_request", "body: "+err.Error())
		}
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		if !admin.BodyTooLarge(w, err) {
			writeError(w, http.StatusBadRequest, "bad_request", "body: one JSON object expected")
		}
		return false
	}
	return true
}

func limitParam(w http.ResponseWriter, v string) (int, bool) {
	if v == "" {
		return 0, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		writeError(w, http.StatusBadRequest, "bad_request", "limit: want a non-negative integer")
		return 0, false
	}
	return n, true
}

// validAgent: an agent is a token subject, so keep it printable and short.
func validAgent(a string) bool {
	if len(a) == 0 || len(a) > 128 {
		return false
	}
	for _, c := range []byte(a) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', strings.IndexByte("_.@:-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func writeError(w http.ResponseWriter, code int, errCode, reason string) {
	writeJSON(w, code, APIError{Code: errCode, Reason: reason})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
