package sidecar

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/certs/certstest"
	"github.com/m1-agent/m1/internal/gateway"
)

func TestValidateApprovals(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Options)
		want string // "" = valid
	}{
		{"off", func(o *Options) {}, ""},
		{"principal header without approvals", func(o *Options) { o.Approvals.PrincipalHeader = "X-Agent-Id" }, ""},
		{"on", func(o *Options) { o.Approvals.URL = "http://orchestrator:9193" }, ""},
		{"no token", func(o *Options) { o.Approvals.URL, o.Approvals.Token = "http://orchestrator:9193", "" }, "M1_APPROVALS_TOKEN"},
		{"no keys", func(o *Options) { o.Approvals.URL, o.JWKSFile = "http://orchestrator:9193", "" }, "M1_JWKS_FILE"},
		{"bad url", func(o *Options) { o.Approvals.URL = "orchestrator:9193" }, "M1_APPROVALS_URL"},
		{"url with a query", func(o *Options) { o.Approvals.URL = "http://o:1/?x=1" }, "M1_APPROVALS_URL"},
		{"bad public url", func(o *Options) { o.Approvals.URL, o.Approvals.PublicURL = "http://o:1", "ftp://x" }, "M1_APPROVALS_PUBLIC_URL"},
		{"no timeout", func(o *Options) { o.Approvals.URL, o.Approvals.Timeout = "http://o:1", 0 }, "M1_APPROVALS_TIMEOUT"},
		{"timeout past Envoy's", func(o *Options) { o.Approvals.URL, o.Approvals.Timeout = "http://o:1", time.Minute }, "M1_APPROVALS_TIMEOUT"},
		{"x-m1 principal header", func(o *Options) { o.Approvals.PrincipalHeader = "x-m1-principal" }, "M1_PRINCIPAL_HEADER"},
		{"x_m1 principal header", func(o *Options) { o.Approvals.PrincipalHeader = "X_M1_Agent" }, "M1_PRINCIPAL_HEADER"},
		{"the approval header", func(o *Options) { o.Approvals.PrincipalHeader = "x-m1-approval-token" }, "M1_PRINCIPAL_HEADER"},
		{"header with a colon", func(o *Options) { o.Approvals.PrincipalHeader = "x-agent:" }, "M1_PRINCIPAL_HEADER"},
		{"pod name with a space", func(o *Options) { o.Approvals.URL, o.Approvals.PodName = "http://o:1", "a b" }, "M1_POD_NAME"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testOptions(t)
			o.JWKSFile, o.Audience, o.Approvals.Token = "/keys/jwks.json", "tools", "sidecar-token"
			tt.mod(&o)
			err := o.validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("validate(%s) = %v, want nil", tt.name, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("validate(%s) = %v, want an error naming %s", tt.name, err, tt.want)
			}
		})
	}
	o := testOptions(t)
	o.JWKSFile, o.Audience, o.Approvals.URL, o.Approvals.Token, o.Approvals.PrincipalHeader = "/k", "tools", "http://o:1/base/", "t", "X-Agent-Id"
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.Approvals.PublicURL != "http://o:1/base/" || o.Approvals.PodName == "" || o.Approvals.PrincipalHeader != "x-agent-id" {
		t.Fatalf("validate did not fill the defaults: %+v", o.Approvals)
	}
}

// TestApprovalsCAFile: an https:// orchestrator serving a private CA's
// certificate is reached with M1_APPROVALS_CA_FILE, and refused without it
// (the system roots do not know that CA), so the call falls back to
// token_missing rather than trusting an unverified server.
func TestApprovalsCAFile(t *testing.T) {
	ca := certstest.NewCA(t, "m1 orchestrator CA")
	pair := ca.Server(t)
	cert, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	orch := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"none"}`))
	}))
	orch.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	orch.StartTLS()
	t.Cleanup(orch.Close)

	claim := func(caFile string) error {
		o := testOptions(t)
		o.JWKSFile, o.Audience, o.Approvals.URL, o.Approvals.Token, o.Approvals.CAFile = "/k", "tools", orch.URL, "sidecar-token", caFile
		if err := o.validate(); err != nil {
			t.Fatal(err)
		}
		_, g, err := o.approvalsOptions()
		if err != nil {
			return err
		}
		_, err = g.Approvals.Claim(context.Background(), gateway.ClaimRequest{Principal: "agent", Tool: "read_file", ArgsSHA256: strings.Repeat("0", 64)})
		return err
	}
	if err := claim(ca.File); err != nil {
		t.Fatalf("claim with M1_APPROVALS_CA_FILE = %v, want the orchestrator's answer", err)
	}
	if err := claim(""); err == nil {
		t.Fatal("claim without the CA file succeeded: the server's private CA was trusted")
	}
	if err := claim(t.TempDir() + "/missing.pem"); err == nil || !strings.Contains(err.Error(), "M1_APPROVALS_CA_FILE") {
		t.Fatalf("a missing CA file = %v, want an error naming M1_APPROVALS_CA_FILE", err)
	}
}
