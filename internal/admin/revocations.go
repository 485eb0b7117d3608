package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/m1-agent/m1/internal/state"
)

// RevocationStore is what the revocation API needs of the state store. An
// error wrapping state.ErrUnavailable means the shared store could not be
// written; the revocation still applies in this process (503).
type RevocationStore interface {
	Revoke(ctx context.Context, r state.Revocation) error
	LiftSub(ctx context.Context, sub string) (bool, error)
	List(ctx context.Context) ([]state.Revocation, error)
}

// RevocationsAPI serves DESIGN §7's revocation endpoints (mount it behind
// RequireToken). DefaultJTITTL is how long a jti revocation without "until"
// lasts: the longest token lifetime plus twice the clock skew.
type RevocationsAPI struct {
	Store         RevocationStore
	DefaultJTITTL time.Duration
	Now           func() time.Time
}

// Routes returns the ServeMux patterns and handlers of the API.
func (a *RevocationsAPI) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"POST /api/m1/revocations":             http.HandlerFunc(a.post),
		"GET /api/m1/revocations":              http.HandlerFunc(a.list),
		"DELETE /api/m1/revocations/sub/{sub}": http.HandlerFunc(a.lift),
	}
}

// maxRevocationBytes bounds a revocation request's body (413 beyond).
const maxRevocationBytes = 64 << 10

type revocationRequest struct {
	JTI   *string `json:"jti"`
	Sub   *string `json:"sub"`
	Until *string `json:"until"`
}

func (a *RevocationsAPI) post(w http.ResponseWriter, r *http.Request) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRevocationBytes))
	dec.DisallowUnknownFields()
	var req revocationRequest
	if err := dec.Decode(&req); err != nil {
		if !BodyTooLarge(w, err) {
			WriteError(w, http.StatusBadRequest, "bad_request", "body must be a JSON object with jti or sub and optional until: "+err.Error())
		}
		return
	}
	if dec.More() {
		WriteError(w, http.StatusBadRequest, "bad_request", "one JSON object expected")
		return
	}
	var rev state.Revocation
	if req.JTI != nil {
		rev.JTI = *req.JTI
	}
	if req.Sub != nil {
		rev.Sub = *req.Sub
	}
	if (req.JTI != nil) == (req.Sub != nil) || rev.JTI+rev.Sub == "" {
		WriteError(w, http.StatusBadRequest, "bad_request", "exactly one of jti and sub is required")
		return
	}
	now := a.Now()
	if req.Until != nil {
		until, err := time.Parse(time.RFC3339, *req.Until)
		if err != nil {
			WriteError(w, http.StatusBadRequest, "bad_request", "until must be an RFC 3339 time: "+err.Error())
			return
		}
		if !until.After(now) {
			WriteError(w, http.StatusBadRequest, "bad_request", "until is in the past")
			return
		}
		rev.Until = until
	} else if rev.JTI != "" {
		rev.Until = now.Add(a.DefaultJTITTL)
	}
	if err := rev.Validate(); err != nil {
		WriteError(w, http.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if err := a.Store.Revoke(r.Context(), rev); err != nil {
		if errors.Is(err, state.ErrUnavailable) {
			WriteError(w, http.StatusServiceUnavailable, "state_unavailable", "revocation applies in this process only: "+err.Error())
			return
		}
		WriteError(w, http.StatusInternalServerError, "internal_error", err.Error())
		return
	}
	writeJSON(w, http.StatusCreated, rev)
}

func (a *RevocationsAPI) list(w http.ResponseWriter, r *http.Request) {
	list, err := a.Store.List(r.Context())
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, "state_unavailable", err.Error())
		return
	}
	if list == nil {
		list = []state.Revocation{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"revocations": list})
}

func (a *RevocationsAPI) lift(w http.ResponseWriter, r *http.Request) {
	sub := r.PathValue("sub")
	lifted, err := a.Store.LiftSub(r.Context(), sub)
	switch {
	case errors.Is(err, state.ErrUnavailable):
		WriteError(w, http.StatusServiceUnavailable, "state_unavailable", err.Error())
	case err != nil:
		WriteError(w, http.StatusInternalServerError, "internal_error", err.Error())
	case !lifted:
		WriteError(w, http.StatusNotFound, "not_found", "no revocation in force for sub "+sub)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}
