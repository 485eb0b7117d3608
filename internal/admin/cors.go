package admin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// ParseOrigins parses ALLOWED_ORIGINS: a comma-separated list of browser
// origins (scheme://host[:port], http or https, nothing after the host).
// Empty entries are skipped; the result is lower-cased, without a default
// port (as browsers send an Origin). A wildcard is
// refused: the API takes a bearer token, and any page could then spend a
// token it got hold of.
func ParseOrigins(list string) ([]string, error) {
	var out []string
	for o := range strings.SplitSeq(list, ",") {
		o = strings.ToLower(strings.TrimSpace(o))
		if o == "" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
			return nil, fmt.Errorf("origin %q: want scheme://host[:port] with scheme http or https", o)
		}
		// Browsers send the scheme's default port as no port at all.
		if (u.Scheme == "https" && u.Port() == "443") || (u.Scheme == "http" && u.Port() == "80") {
			o = u.Scheme + "://" + strings.TrimSuffix(u.Host, ":"+u.Port())
		}
		out = append(out, o)
	}
	return out, nil
}

// cors lets the browser origins in allowed call the JSON API under /api/
// cross-origin: a request from an allowed origin gets its origin echoed in
// Access-Control-Allow-Origin, and its preflight (OPTIONS with
// Access-Control-Request-Method) is answered 204 here, without the token,
// which the preflight never carries. Other origins get no CORS headers, so
// the browser keeps them out. With no allowed origins, cors is next.
func cors(allowed []string, next http.Handler) http.Handler {
	if len(allowed) == 0 {
		return next
	}
	set := make(map[string]bool, len(allowed))
	for _, o := range allowed {
		set[strings.ToLower(o)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || !strings.HasPrefix(r.URL.Path, "/api/") {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		if !set[strings.ToLower(origin)] {
			next.ServeHTTP(w, r)
			return
		}
		h.Set("Access-Control-Allow-Origin", origin)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			h.Set("Access-Control-Allow-Methods", "GET, POST, DELETE")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}
