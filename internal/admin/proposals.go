package admin

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/toolcall"
)

// MaxPendingListed bounds the pending proposals the dashboard lists.
const MaxPendingListed = 200

// ProposalView is a proposal as the dashboard shows it to the operator
// who decides it: its record, the canonical (RFC 8785) form of its
// arguments, exactly what an approval's args_sha256 binds, whether that
// hash is theirs, its age, and the commands that decide it.
type ProposalView struct {
	store.Proposal
	CanonicalArgs string  `json:"canonical_args"`       // "" when the arguments cannot be canonicalized
	ArgsError     string  `json:"args_error,omitempty"` // why they cannot, or why the hash is not theirs
	AgeSeconds    float64 `json:"age_seconds"`          // since it was filed
	ApproveCmd    string  `json:"approve_command"`      // m1 approve ID
	RejectCmd     string  `json:"reject_command"`       // m1 reject ID --reason …
	Approvable    bool    `json:"approvable"`           // pending, with arguments m1 approve will sign
}

// PendingDocument is the /api/m1/dashboard/proposals document.
type PendingDocument struct {
	Pending          []ProposalView `json:"pending"` // oldest first, at most MaxPendingListed
	Total            int            `json:"total"`   // all pending proposals
	OldestAgeSeconds float64        `json:"oldest_age_seconds"`
}

func (a *DashboardAPI) view(p store.Proposal, now time.Time) ProposalView {
	v := ProposalView{Proposal: p, AgeSeconds: max(now.Sub(p.CreatedAt).Truncate(time.Millisecond).Seconds(), 0),
		ApproveCmd: "m1 approve " + p.ID, RejectCmd: "m1 reject " + p.ID + " --reason '…'"}
	args := []byte(p.Args)
	if len(bytes.TrimSpace(args)) == 0 {
		args = []byte("{}")
	}
	canon := jsontext.Value(bytes.Clone(args))
	if err := canon.Canonicalize(); err != nil {
		v.ArgsError = "the arguments cannot be canonicalized: " + err.Error()
		return v
	}
	v.CanonicalArgs = string(canon)
	switch sum, err := toolcall.ArgsSHA256(p.Tool, p.Args); {
	case err != nil:
		v.ArgsError = "the sidecar would refuse these arguments: " + err.Error()
	case sum != p.ArgsSHA256:
		v.ArgsError = "args_sha256 is not the hash of these arguments (" + sum + "): do not approve"
	default:
		v.Approvable = p.Status == store.ProposalPending
	}
	return v
}

func (a *DashboardAPI) pending(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, ok := a.records(ctx, w)
	if !ok {
		return
	}
	ps, err := rec.Proposals(ctx, store.ProposalFilter{Status: store.ProposalPending})
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "store_unavailable", "list proposals: "+err.Error())
		return
	}
	now := a.Now()
	doc := PendingDocument{Pending: []ProposalView{}, Total: len(ps)}
	for i, p := range ps {
		v := a.view(p, now)
		if i == 0 {
			doc.OldestAgeSeconds = v.AgeSeconds
		}
		if i < MaxPendingListed {
			doc.Pending = append(doc.Pending, v)
		}
	}
	writeJSON(w, http.StatusOK, doc)
}

func (a *DashboardAPI) proposal(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !toolcall.ValidName(id) {
		WriteError(w, http.StatusNotFound, "not_found", "no such proposal")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), recordsTimeout)
	defer cancel()
	rec, ok := a.records(ctx, w)
	if !ok {
		return
	}
	p, err := rec.Proposal(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		WriteError(w, http.StatusNotFound, "not_found", "no such proposal")
		return
	case err != nil:
		WriteError(w, http.StatusServiceUnavailable, "store_unavailable", "get proposal: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, a.view(p, a.Now()))
}
