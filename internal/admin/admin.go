// Package admin serves m1-authz's admin HTTP port: open health and metrics
// endpoints, and the dashboard page and a JSON API behind a bearer token
// (DESIGN §8).
package admin

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health statuses, overall and per check.
const (
	StatusOK       = "ok"
	StatusDegraded = "degraded"
	StatusFailing  = "failing"
	StatusDisabled = "disabled" // a check whose component is not configured
)

// Check is one component's health.
type Check struct {
	Status string         `json:"status"`
	Detail string         `json:"detail,omitempty"`
	Info   map[string]any `json:"info,omitempty"`
}

// Report is the /health document.
type Report struct {
	Status  string           `json:"status"`
	Version string           `json:"version"`
	Checks  map[string]Check `json:"checks"`
	// Ready is false while the policy is not loaded or the process drains;
	// it decides the 503 of /health and /health/ready.
	Ready bool `json:"-"`
	// Started is true once startup finished: the listeners are up. A
	// remote policy source that has not loaded yet keeps Ready false, not
	// Started: a bundle server down at start must not have the kubelet
	// restart the pod over and over.
	Started bool `json:"-"`
}

// Options configure the handler.
type Options struct {
	Token    string                // bearer token for everything but health and metrics; required
	Gatherer prometheus.Gatherer   // for /metrics
	Health   func() Report         // called per request
	API      map[string]func() any // JSON documents under /api/m1/dashboard/{name}
	// Documents are further documents under /api/m1/dashboard/{name},
	// ones that read the request or can fail. With API they make the
	// snapshot at /api/m1/dashboard, and the Aliases serve them too.
	Documents map[string]Document
	Routes    map[string]http.Handler // further authenticated routes, by ServeMux pattern
	// AllowedOrigins are the browser origins allowed to call the API under
	// /api/ cross-origin (CORS; see ParseOrigins); none = same origin only.
	AllowedOrigins []string
	// Now is the clock of the session cookie's expiry; nil: time.Now.
	Now func() time.Time
}

// NewHandler returns the admin HTTP handler: the dashboard page at / and
// its assets under /assets/ (static, no data), health and metrics open, the
// rest behind o.Token; the dashboard documents are also read with the
// session cookie the page gets when it presents the token (see sessions).
func NewHandler(o Options) http.Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	sess := newSessions(o.Token, o.Now)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		rep := o.Health()
		code := http.StatusOK
		if !rep.Ready {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, rep)
	})
	mux.HandleFunc("GET /health/live", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": StatusOK})
	})
	mux.HandleFunc("GET /health/ready", func(w http.ResponseWriter, r *http.Request) {
		rep := o.Health()
		if !rep.Ready {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": rep.Status})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": rep.Status})
	})
	mux.HandleFunc("GET /health/startup", func(w http.ResponseWriter, r *http.Request) {
		if !o.Health().Started {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "started"})
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /assets/{name}", serveAsset)
	// The page needs the token (or a session) like everything but health
	// and metrics (DESIGN §8). Without one it is answered 401 with the page
	// itself, which a browser still shows and which asks for the token: a
	// link to a proposal (DESIGN §10) opens in a tab that has none yet. Its
	// assets stay open: they are the same for everyone and hold no data,
	// and a browser runs no script answered 401. Presented with the token,
	// the page also starts a session.
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case HasToken(r, o.Token):
			sess.issue(w, r)
			servePage(w, http.StatusOK)
		case readsByCookie(r) && sess.valid(r):
			servePage(w, http.StatusOK)
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="m1-admin"`)
			servePage(w, http.StatusUnauthorized)
		}
	})

	api := http.NewServeMux()
	api.HandleFunc("POST /api/m1/dashboard/session", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"expires_at": sess.issue(w, r).UTC()})
	})
	api.HandleFunc("DELETE /api/m1/dashboard/session", func(w http.ResponseWriter, r *http.Request) {
		sess.clear(w, r)
		w.WriteHeader(http.StatusNoContent)
	})
	docs := documents(o)
	api.HandleFunc("GET /api/m1/dashboard", snapshot(docs))
	for name, doc := range docs {
		api.HandleFunc("GET /api/m1/dashboard/"+name, serveDocument(doc))
	}
	for alias, name := range Aliases {
		if doc, ok := docs[name]; ok {
			api.HandleFunc("GET /api/m1/dashboard/"+alias, serveDocument(doc))
		}
	}
	for pattern, h := range o.Routes {
		api.Handle(pattern, h)
	}
	api.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "not_found", "no such admin endpoint")
	})
	mux.Handle("/", sess.requireAuth(o.Token, api))
	return cors(o.AllowedOrigins, mux)
}

// RequireToken lets a request through only with "Authorization: Bearer
// <token>" (the scheme in any case), or for GET the "token" query parameter
// of the URL logged at start, compared in constant time; others get 401 with
// a JSON reason, written before any of the body is read. A 401 to a request
// with a body ends the connection (RefuseBody): net/http would otherwise
// read the unread body (up to 256 KiB, for as long as the client takes to
// send it) before writing the answer, to keep the connection.
func RequireToken(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !HasToken(r, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="m1-admin"`)
			if r.ContentLength != 0 { // a body is declared (-1: chunked, length unknown)
				RefuseBody(w)
			}
			WriteError(w, http.StatusUnauthorized, "unauthorized", "missing or wrong admin bearer token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// HasToken reports whether r carries token (non-empty) as RequireToken
// accepts it: "Authorization: Bearer <token>", or for GET the "token"
// query parameter; compared in constant time.
func HasToken(r *http.Request, token string) bool {
	got, ok := "", false
	if scheme, cred, found := strings.Cut(r.Header.Get("Authorization"), " "); found && strings.EqualFold(scheme, "bearer") {
		got, ok = strings.TrimSpace(cred), true
	} else if q := r.URL.Query().Get("token"); r.Method == http.MethodGet && q != "" {
		got, ok = q, true
	}
	return ok && token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// WriteError writes the JSON error body used across M1's HTTP APIs.
func WriteError(w http.ResponseWriter, code int, errCode, reason string) {
	writeJSON(w, code, map[string]string{"error": errCode, "reason": reason})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
