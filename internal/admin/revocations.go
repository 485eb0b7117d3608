package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/store"
)

// RevocationStore is what the revocation API needs of the state store. An
// error wrapping state.ErrUnavailable and state.ErrNotStored means the
// durable store could not be written and nothing changed (503); one
// wrapping state.ErrUnavailable alone means Redis could not be written: the
// revocation is stored and applies in this process (503).
type RevocationStore interface {
	Revoke(ctx context.Context, r state.Revocation) error
	LiftSub(ctx context.Context, sub string) (bool, error)
	List(ctx context.Context) ([]state.Revocation, error)
}

// Auditor records audit events off the request path (the audit recorder).
type Auditor interface {
	Record(store.Event)
}

// Audit event fields of revocations (kind store.KindRevocation).
const (
	ActionRevoke = "revoke" // the event's decision: a revocation
	ActionLift   = "lift"   // the event's decision: a subject's revocation lifted
)

// RevocationsAPI serves DESIGN §7's revocation endpoints (mount it behind
// RequireToken). DefaultJTITTL is how long a jti revocation without "until"
// lasts: the longest token lifetime plus twice the clock skew. With Audit
// set, every revocation and lift that reaches the store is recorded as a
// revocation audit event: who (the admin caller), what, until, and the
// outcome.
type RevocationsAPI struct {
	Store         RevocationStore
	DefaultJTITTL time.Duration
	Now           func() time.Time
	Audit         Auditor // nil: not audited
}

// Caller names the admin caller of r for the audit trail and the stored
// revocation: "admin:" and the first 12 hex digits of the SHA-256 of its
// bearer token (the admin API has one token; rotating it changes the
// name). The token itself is never recorded.
func Caller(r *http.Request) string {
	if scheme, cred, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "bearer") {
		sum := sha256.Sum256([]byte(strings.TrimSpace(cred)))
		return "admin:" + hex.EncodeToString(sum[:6])
	}
	return "admin"
}

// audit records one revocation event.
func (a *RevocationsAPI) audit(r *http.Request, action string, rev state.Revocation, status int, err error) {
	if a.Audit == nil {
		return
	}
	what := "sub " + rev.Sub
	if rev.JTI != "" {
		what = "jti " + rev.JTI
	}
	until := "until lifted"
	if !rev.Until.IsZero() {
		until = "until " + rev.Until.UTC().Format(time.RFC3339)
	}
	detail := action + " " + what
	if action == ActionRevoke {
		detail += " " + until
	}
	detail += " (from " + r.RemoteAddr + ")"
	reason := "ok"
	if err != nil {
		reason, detail = deny.StateUnavailable, detail+": "+err.Error()
	}
	args, _ := json.Marshal(rev)
	a.Audit.Record(store.Event{
		Time:      a.Now(),
		Kind:      store.KindRevocation,
		Principal: Caller(r),
		TokenJTI:  rev.JTI,
		Args:      args,
		Decision:  action,
		Reason:    reason,
		Detail:    detail,
		Status:    status,
	})
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
	rev.By = Caller(r)
	if err := a.Store.Revoke(r.Context(), rev); err != nil {
		switch {
		case errors.Is(err, state.ErrNotStored):
			a.audit(r, ActionRevoke, rev, http.StatusServiceUnavailable, err)
			WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, "revocation not stored; nothing changed: "+err.Error())
		case errors.Is(err, state.ErrUnavailable):
			a.audit(r, ActionRevoke, rev, http.StatusServiceUnavailable, err)
			WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, "revocation stored and in force in this process, not shared with the other sidecars yet: "+err.Error())
		default:
			WriteError(w, http.StatusInternalServerError, deny.InternalError, err.Error())
		}
		return
	}
	a.audit(r, ActionRevoke, rev, http.StatusCreated, nil)
	writeJSON(w, http.StatusCreated, rev)
}

func (a *RevocationsAPI) list(w http.ResponseWriter, r *http.Request) {
	list, err := a.Store.List(r.Context())
	if err != nil {
		WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, err.Error())
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
	rev := state.Revocation{Sub: sub}
	switch {
	case errors.Is(err, state.ErrNotStored):
		a.audit(r, ActionLift, rev, http.StatusServiceUnavailable, err)
		WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, "lift not stored; nothing changed: "+err.Error())
	case errors.Is(err, state.ErrUnavailable):
		a.audit(r, ActionLift, rev, http.StatusServiceUnavailable, err)
		WriteError(w, http.StatusServiceUnavailable, deny.StateUnavailable, "lift stored and applied in this process, not shared with the other sidecars yet (retry): "+err.Error())
	case err != nil:
		WriteError(w, http.StatusInternalServerError, deny.InternalError, err.Error())
	case !lifted:
		WriteError(w, http.StatusNotFound, "not_found", "no revocation in force for sub "+sub)
	default:
		a.audit(r, ActionLift, rev, http.StatusNoContent, nil)
		w.WriteHeader(http.StatusNoContent)
	}
}
