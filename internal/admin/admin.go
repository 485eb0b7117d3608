// Package admin serves m1-authz's admin HTTP port: open health and metrics
// endpoints, and the dashboard page and a JSON API behind a bearer token
// (DESIGN §8).
package admin

import (
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"strings"

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
	// Started is true once startup finished (policy loaded, listeners up).
	Started bool `json:"-"`
}

// Options configure the handler.
type Options struct {
	Token    string                  // bearer token for everything but health and metrics; required
	Gatherer prometheus.Gatherer     // for /metrics
	Health   func() Report           // called per request
	API      map[string]func() any   // JSON documents under /api/m1/dashboard/{name}
	Routes   map[string]http.Handler // further authenticated routes, by ServeMux pattern
	// AllowedOrigins are the browser origins allowed to call the API under
	// /api/ cross-origin (CORS; see ParseOrigins); none = same origin only.
	AllowedOrigins []string
}

// NewHandler returns the admin HTTP handler: the dashboard page at / and
// its assets under /assets/ (static, no data), health and metrics open, the
// rest behind o.Token.
func NewHandler(o Options) http.Handler {
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
	// The page is open, as its assets are: it holds no data (the API it
	// calls needs the token), and a link to a proposal (DESIGN §10) opens
	// in a new tab that has no token yet; the page asks for it.
	mux.HandleFunc("GET /{$}", servePage)

	api := http.NewServeMux()
	for name, fn := range o.API {
		api.HandleFunc("GET /api/m1/dashboard/"+name, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, fn())
		})
	}
	for pattern, h := range o.Routes {
		api.Handle(pattern, h)
	}
	api.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusNotFound, "not_found", "no such admin endpoint")
	})
	mux.Handle("/", RequireToken(o.Token, api))
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
