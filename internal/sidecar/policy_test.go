package sidecar

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/testenv"
)

// M1_POLICY_BUNDLE_TOKEN is the active bundle server's credential: a
// shadow bundle on another server does not get it, one on the same server
// does.
func TestShadowBundleToken(t *testing.T) {
	var buf bytes.Buffer
	rego := "package m1.authz\nimport rego.v1\ndefault decision := {\"allowed\": false, \"reason\": \"default_deny\", \"http_status\": 403}\n"
	if err := policy.WriteTarGz(&buf, map[string][]byte{".manifest": []byte(`{"revision":"r1"}`), "authz.rego": []byte(rego)}, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	auth := map[string][]string{} // server/path → Authorization headers received
	serve := func(name string) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			auth[name+r.URL.Path] = append(auth[name+r.URL.Path], r.Header.Get("Authorization"))
			mu.Unlock()
			_, _ = w.Write(buf.Bytes())
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	active, other := serve("active"), serve("other")
	got := func(key string) []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), auth[key]...)
	}
	for _, tc := range []struct {
		name, shadowURL, key, want string
	}{
		{"shadow on another server", other.URL + "/shadow.tar.gz", "other/shadow.tar.gz", ""},
		{"shadow on the same server", active.URL + "/shadow.tar.gz", "active/shadow.tar.gz", "Bearer s3cret"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOptions(t)
			o.PolicyBundleURL, o.PolicyBundleToken = active.URL+"/active.tar.gz", "s3cret"
			o.PolicyShadowBundleURL = tc.shadowURL
			startServer(t, o)
			testenv.Eventually(t, 5*time.Second, "the shadow bundle fetched", func() bool { return len(got(tc.key)) > 0 })
			if h := got(tc.key)[0]; h != tc.want {
				t.Errorf("shadow bundle server got Authorization %q, want %q", h, tc.want)
			}
			if h := got("active/active.tar.gz"); len(h) == 0 || h[0] != "Bearer s3cret" {
				t.Errorf("active bundle server got Authorization %q, want the token", h)
			}
		})
	}
	if shadowToken(&Options{PolicyShadowBundleURL: active.URL + "/s", PolicyBundleToken: "s3cret"}) != "" {
		t.Error("a token without M1_POLICY_BUNDLE_URL is sent to the shadow bundle server")
	}
}
