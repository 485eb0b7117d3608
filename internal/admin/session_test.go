package admin_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/state"
)

// dashboardHandler is testHandler with a clock, a document that fails and
// the documents the aliases name.
func dashboardHandler(now func() time.Time) http.Handler {
	rev := &admin.RevocationsAPI{Store: state.NewMemory(state.MemoryOptions{}), DefaultJTITTL: time.Minute, Now: now}
	return admin.NewHandler(admin.Options{
		Token:    "secret-token",
		Gatherer: prometheus.NewRegistry(),
		Health:   func() admin.Report { return admin.Report{Status: admin.StatusOK, Ready: true, Started: true} },
		Routes:   rev.Routes(),
		Now:      now,
		API: map[string]func() any{
			"cache":  func() any { return map[string]any{"enabled": true} },
			"policy": func() any { return map[string]any{"revision": "r1"} },
		},
		Documents: map[string]admin.Document{
			"runs": func(r *http.Request) (any, error) { return map[string]any{"limit": r.URL.Query().Get("limit")}, nil },
			"costs": func(*http.Request) (any, error) {
				return nil, &admin.DocError{Status: http.StatusServiceUnavailable, Code: "store_unavailable", Reason: "store down"}
			},
			"history": func(*http.Request) (any, error) { return map[string]any{"big": true}, nil },
		},
	})
}

func send(t *testing.T, h http.Handler, method, target string, header http.Header, cookies ...*http.Cookie) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(""))
	for k, v := range header {
		req.Header[k] = v
	}
	for _, c := range cookies {
		req.AddCookie(c)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func sessionCookie(t *testing.T, w *httptest.ResponseRecorder) *http.Cookie {
	t.Helper()
	for _, c := range w.Result().Cookies() {
		if strings.HasPrefix(c.Name, "m1_session_") {
			return c
		}
	}
	t.Fatalf("no session cookie set: %v", w.Result().Header["Set-Cookie"])
	return nil
}

// The page opened with the token sets a session cookie that lets a reload
// read the page and the dashboard documents, and nothing else.
func TestSessionCookie(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	h := dashboardHandler(clock)
	w := send(t, h, "GET", "/?token=secret-token", nil)
	if w.Code != 200 {
		t.Fatalf("GET /?token= = %d", w.Code)
	}
	c := sessionCookie(t, w)
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Secure || c.Path != "/" {
		t.Errorf("cookie = %+v, want HttpOnly, SameSite=Strict, Path=/, not Secure over plain HTTP", c)
	}
	if w := send(t, h, "GET", "/", http.Header{"Authorization": {"Bearer secret-token"}}); !sessionCookie(t, w).HttpOnly {
		t.Errorf("GET / with a bearer header sets no session cookie")
	}
	tls := httptest.NewRequest("GET", "https://m1/?token=secret-token", nil)
	tw := httptest.NewRecorder()
	h.ServeHTTP(tw, tls)
	if !sessionCookie(t, tw).Secure {
		t.Errorf("cookie over TLS is not Secure")
	}

	for _, tc := range []struct {
		name, method, path string
		header             http.Header
		cookie             *http.Cookie
		want               int
	}{
		{"page", "GET", "/", nil, c, 200},
		{"snapshot", "GET", "/api/m1/dashboard", nil, c, 200},
		{"document", "GET", "/api/m1/dashboard/runs", nil, c, 200},
		{"alias", "GET", "/api/m1/dashboard/recent-runs", nil, c, 200},
		{"no cookie", "GET", "/api/m1/dashboard/runs", nil, nil, 401},
		{"revocations are not the dashboard", "GET", "/api/m1/revocations", nil, c, 401},
		{"a POST is never the cookie's", "POST", "/api/m1/revocations", nil, c, 401},
		{"nor a DELETE", "DELETE", "/api/m1/revocations/sub/x", nil, c, 401},
		{"nor a new session", "POST", "/api/m1/dashboard/session", nil, c, 401},
		{"cross-site", "GET", "/api/m1/dashboard/runs", http.Header{"Sec-Fetch-Site": {"cross-site"}}, c, 401},
		{"same-origin", "GET", "/api/m1/dashboard/runs", http.Header{"Sec-Fetch-Site": {"same-origin"}}, c, 200},
		{"a wrong bearer beside the cookie", "GET", "/api/m1/dashboard/runs", http.Header{"Authorization": {"Bearer nope"}}, c, 401},
		{"forged", "GET", "/api/m1/dashboard/runs", nil, &http.Cookie{Name: c.Name, Value: c.Value[:len(c.Value)-2] + "xx"}, 401},
		{"another server's", "GET", "/api/m1/dashboard/runs", nil, &http.Cookie{Name: c.Name, Value: strings.Replace(c.Value, "v1.", "v2.", 1)}, 401},
	} {
		var cookies []*http.Cookie
		if tc.cookie != nil {
			cookies = append(cookies, tc.cookie)
		}
		if w := send(t, h, tc.method, tc.path, tc.header, cookies...); w.Code != tc.want {
			t.Errorf("%s: %s %s = %d, want %d", tc.name, tc.method, tc.path, w.Code, tc.want)
		}
	}

	// Another token: the cookie means nothing there (and has another name).
	other := admin.NewHandler(admin.Options{Token: "other-token", Gatherer: prometheus.NewRegistry(), Now: clock,
		Health: func() admin.Report { return admin.Report{Ready: true} }})
	if w := send(t, other, "GET", "/api/m1/dashboard/health", nil, &http.Cookie{Name: c.Name, Value: c.Value}); w.Code != 401 {
		t.Errorf("GET /api/m1/dashboard/health of a server with another token, with this cookie = %d, want 401", w.Code)
	}

	now = now.Add(admin.SessionTTL + time.Second)
	if w := send(t, h, "GET", "/api/m1/dashboard/runs", nil, c); w.Code != 401 {
		t.Errorf("GET /api/m1/dashboard/runs with an expired session = %d, want 401", w.Code)
	}

	w = send(t, h, "POST", "/api/m1/dashboard/session", http.Header{"Authorization": {"Bearer secret-token"}})
	if w.Code != 200 || !strings.Contains(w.Body.String(), "expires_at") {
		t.Errorf("POST session with the token = %d %s, want 200 with expires_at", w.Code, w.Body)
	}
	if c := sessionCookie(t, w); send(t, h, "GET", "/api/m1/dashboard/runs", nil, c).Code != 200 {
		t.Errorf("the session POST issued does not read the documents")
	}
	w = send(t, h, "DELETE", "/api/m1/dashboard/session", http.Header{"Authorization": {"Bearer secret-token"}})
	if w.Code != 204 || sessionCookie(t, w).MaxAge >= 0 {
		t.Errorf("DELETE session = %d, cookie %v; want 204 and the cookie expired", w.Code, w.Result().Cookies())
	}
}

// The snapshot holds every document but the history, a failed one as its
// error; the aliases serve the documents they name.
func TestSnapshotAndAliases(t *testing.T) {
	h := dashboardHandler(time.Now)
	auth := http.Header{"Authorization": {"Bearer secret-token"}}
	w := send(t, h, "GET", "/api/m1/dashboard?limit=7", auth)
	body := w.Body.String()
	if w.Code != 200 {
		t.Fatalf("GET snapshot = %d %s", w.Code, body)
	}
	for _, want := range []string{`"cache"`, `"policy"`, `"runs"`, `"limit": ""`, `"costs": {`, `"error": "store_unavailable"`} {
		if !strings.Contains(body, want) {
			t.Errorf("snapshot lacks %s:\n%s", want, body)
		}
	}
	if strings.Contains(body, `"history"`) {
		t.Errorf("snapshot holds the history:\n%s", body)
	}
	for alias, want := range map[string]string{"cache-stats": `"enabled"`, "policy-stats": `"r1"`, "recent-runs": `"limit"`, "cost-breakdown": `store down`} {
		w := send(t, h, "GET", "/api/m1/dashboard/"+alias, auth)
		if b, _ := io.ReadAll(w.Body); !strings.Contains(string(b), want) {
			t.Errorf("GET %s = %d %s, want %s", alias, w.Code, b, want)
		}
	}
	if w := send(t, h, "GET", "/api/m1/dashboard/costs", auth); w.Code != 503 {
		t.Errorf("GET a failing document = %d, want its DocError's 503", w.Code)
	}
}
