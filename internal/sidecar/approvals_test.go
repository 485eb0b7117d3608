package sidecar

import (
	"strings"
	"testing"
	"time"
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
			o.JWKSFile, o.Audience = "/keys/jwks.json", "tools"
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
	o.JWKSFile, o.Audience, o.Approvals.URL, o.Approvals.PrincipalHeader = "/k", "tools", "http://o:1/base/", "X-Agent-Id"
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.Approvals.PublicURL != "http://o:1/base/" || o.Approvals.PodName == "" || o.Approvals.PrincipalHeader != "x-agent-id" {
		t.Fatalf("validate did not fill the defaults: %+v", o.Approvals)
	}
}
