package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SessionTTL is how long a dashboard session cookie authorizes reads.
const SessionTTL = 12 * time.Hour

// sessions issues and checks the dashboard's session cookie: the page
// presents the admin token once (GET /?token=… or a bearer header; or
// POST /api/m1/dashboard/session), and the cookie then lets a reload, or a
// new tab, read the page and the dashboard documents without the token in
// the URL.
//
// The cookie is stateless: "v1.<expiry>.<nonce>.<mac>", the MAC an
// HMAC-SHA256 under a key derived from the admin token, so every replica
// with the same token accepts it, a restart keeps it, and a new token ends
// every session. It is HttpOnly (scripts never see it), SameSite=Strict
// (no other site's page makes the browser send it) and Secure over TLS.
// It authorizes GET and HEAD of the page and of /api/m1/dashboard… only:
// nothing that changes state (revocations, cache flush, approvals) is ever
// authorized by it, so a forged cross-site request has nothing to gain
// (CSRF). A request a browser marks Sec-Fetch-Site: cross-site is never
// authorized by the cookie either.
type sessions struct {
	key  []byte
	name string
	now  func() time.Time
}

func newSessions(token string, now func() time.Time) *sessions {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("m1 dashboard session v1"))
	key := m.Sum(nil)
	id := sha256.Sum256(key)
	// The name carries the key's id, so that servers with other tokens
	// on one host (cookies ignore the port) keep their own cookies.
	return &sessions{key: key, name: "m1_session_" + hex.EncodeToString(id[:4]), now: now}
}

func (s *sessions) mac(payload string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// issue sets a new session cookie on w and returns its expiry.
func (s *sessions) issue(w http.ResponseWriter, r *http.Request) time.Time {
	exp := s.now().Add(SessionTTL).Truncate(time.Second)
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	payload := "v1." + strconv.FormatInt(exp.Unix(), 10) + "." + base64.RawURLEncoding.EncodeToString(nonce[:])
	http.SetCookie(w, &http.Cookie{
		Name: s.name, Value: payload + "." + s.mac(payload), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		// No Max-Age: a browser session's cookie; the expiry inside it bounds it.
	})
	return exp
}

// clear expires the session cookie.
func (s *sessions) clear(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: s.name, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
}

// valid reports whether r carries an unexpired session cookie of s.
func (s *sessions) valid(r *http.Request) bool {
	c, err := r.Cookie(s.name)
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(c.Value, '.')
	if i < 0 {
		return false
	}
	payload, mac := c.Value[:i], c.Value[i+1:]
	if subtle.ConstantTimeCompare([]byte(mac), []byte(s.mac(payload))) != 1 {
		return false
	}
	parts := strings.Split(payload, ".")
	if len(parts) != 3 || parts[0] != "v1" {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	return err == nil && s.now().Before(time.Unix(exp, 0))
}

// readsByCookie reports whether the cookie may authorize r: a GET or HEAD
// of the page or of a dashboard document, not marked cross-site.
func readsByCookie(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
		return false
	}
	p := r.URL.Path
	return p == "/" || p == "/api/m1/dashboard" || strings.HasPrefix(p, "/api/m1/dashboard/")
}

// requireAuth lets r through with the admin token (RequireToken), or, for
// the reads readsByCookie allows, with a valid session cookie.
func (s *sessions) requireAuth(token string, next http.Handler) http.Handler {
	withToken := RequireToken(token, next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if readsByCookie(r) && r.Header.Get("Authorization") == "" && r.URL.Query().Get("token") == "" && s.valid(r) {
			next.ServeHTTP(w, r)
			return
		}
		withToken.ServeHTTP(w, r)
	})
}

// presentedToken reports whether r carried the admin token itself (a
// bearer header or ?token=), as opposed to the cookie; only then is a
// session issued.
func presentedToken(r *http.Request) bool {
	return r.Header.Get("Authorization") != "" || r.URL.Query().Get("token") != ""
}
