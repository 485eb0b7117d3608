package sidecar

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/admin/admintest"
)

// The admin port bounds every connection and answers 401 without reading a
// body (DESIGN §7): the ten idle keep-alive connections and ten
// POST /api/m1/revocations announcing 1000 bytes and sending one held
// goroutines for 90 s with no 401 written.
func TestAdminServerBoundsConnections(t *testing.T) {
	o := testOptions(t)
	o.AdminToken = "secret-token"
	o.AdminHTTP.ReadHeaderTimeout = 300 * time.Millisecond
	o.AdminHTTP.IdleTimeout = 300 * time.Millisecond
	o.AdminHTTP.ReadTimeout = 2 * admintest.Patience
	s := startServer(t, o)
	admintest.RunBounds(t, admintest.Target{
		Addr: s.AdminAddr().String(), Token: "secret-token", BodyPath: "/api/m1/revocations", Limits: o.AdminHTTP,
	})
}

// Every response of the admin port carries the security headers (DESIGN
// §8): a 200, a 401 and a 404, health and metrics included.
func TestAdminSecurityHeaders(t *testing.T) {
	s := startServer(t, testOptions(t))
	base := "http://" + s.AdminAddr().String()
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/health", "", 200},
		{"/health/live", "", 200},
		{"/metrics", "", 200},
		{"/api/m1/dashboard/policy", s.AdminToken(), 200},
		{"/api/m1/dashboard/policy", "", 401},
		{"/api/m1/nope", s.AdminToken(), 404},
		{"/assets/nope.js", "", 404},
	} {
		req, _ := http.NewRequest("GET", base+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		what := "GET " + tc.path
		if tc.token != "" {
			what += " with the token"
		}
		if resp.StatusCode != tc.want {
			t.Errorf("%s = %d, want %d", what, resp.StatusCode, tc.want)
		}
		admintest.CheckHeaders(t, what, resp)
	}
	req, _ := http.NewRequest("POST", base+"/api/m1/revocations", strings.NewReader(`{"jti":"`+strings.Repeat("a", 80<<10)+`"}`))
	req.Header.Set("Authorization", "Bearer "+s.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("POST /api/m1/revocations of 80 KiB = %d, want 413", resp.StatusCode)
	}
	admintest.CheckHeaders(t, "POST /api/m1/revocations of 80 KiB", resp)
}
