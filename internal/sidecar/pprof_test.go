package sidecar

import (
	"net/http"
	"strings"
	"testing"
)

// The runtime profiles are served on the admin port behind the admin
// token, and the command line (which may carry secrets) is not.
func TestPprofBehindAdminToken(t *testing.T) {
	o := testOptions(t)
	o.AdminToken = "admin-secret"
	s := startServer(t, o)
	base := "http://" + s.AdminAddr().String()
	for _, tc := range []struct {
		name, path, token string
		want              int
		body              string
	}{
		{"index without token", "/debug/pprof/", "", http.StatusUnauthorized, "unauthorized"},
		{"profile without token", "/debug/pprof/profile?seconds=1", "", http.StatusUnauthorized, "unauthorized"},
		{"index", "/debug/pprof/", "admin-secret", http.StatusOK, "goroutine"},
		{"heap", "/debug/pprof/heap?debug=1", "admin-secret", http.StatusOK, "heap profile"},
		{"cmdline", "/debug/pprof/cmdline", "admin-secret", http.StatusNotFound, ""},
	} {
		code, body := get(t, base+tc.path, tc.token)
		if code != tc.want || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s (%s) = %d %.80q, want %d containing %q", tc.path, tc.name, code, body, tc.want, tc.body)
		}
	}
	// A short CPU profile: gzip-compressed protobuf.
	code, body := get(t, base+"/debug/pprof/profile?seconds=1", "admin-secret")
	if code != http.StatusOK || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Errorf("GET /debug/pprof/profile?seconds=1 = %d %.20q, want 200 and a gzip profile", code, body)
	}
}
