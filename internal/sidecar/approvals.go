package sidecar

import (
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/gateway"
)

// ApprovalsOptions hold approvals at the gateway for MCP clients that
// never see a token (DESIGN §10); off without URL.
type ApprovalsOptions struct {
	URL       string        // the orchestrator's base URL (M1_APPROVALS_URL); "" = off
	Token     string        // bearer token of the sidecar's calls to it (M1_APPROVALS_TOKEN)
	PublicURL string        // base of the URL a client shows a person (M1_APPROVALS_PUBLIC_URL); "" = URL
	Timeout   time.Duration // all the orchestrator calls of one check (M1_APPROVALS_TIMEOUT)
	PodName   string        // this sidecar's pod, shown to the operator (M1_POD_NAME); "" = the host name
	CAFile    string        // PEM CAs an https:// URL is verified against (M1_APPROVALS_CA_FILE); "" = the system roots

	// PrincipalHeader is the request header the Envoy in front of the
	// sidecar sets to the authenticated agent (from jwt_authn, say),
	// overwriting a client's (M1_PRINCIPAL_HEADER); "" trusts no header.
	PrincipalHeader string
}

// defaultApprovalsTimeout bounds the gateway's calls to the orchestrator
// in one check: well inside Envoy's 500 ms ext_authz timeout
// (deploy/envoy), with room for the policy and the rest of the check.
const defaultApprovalsTimeout = 200 * time.Millisecond

// bindApprovalFlags defines the flags of o.Approvals on fs and adds their
// environment variables to env.
func (o *Options) bindApprovalFlags(fs *flag.FlagSet, env map[string]string) {
	a := &o.Approvals
	fs.StringVar(&a.URL, "approvals-url", a.URL, "m1-orchestrator's base URL: hold approvals at the gateway for MCP clients without tokens (empty = off; see docs/GATEWAY-APPROVALS.md)")
	fs.StringVar(&a.Token, "approvals-token", a.Token, "bearer token of the sidecar's calls to --approvals-url (the orchestrator's M1_APPROVALS_TOKEN); required with --approvals-url")
	fs.StringVar(&a.PublicURL, "approvals-public-url", a.PublicURL, "base URL people reach the orchestrator's dashboard at, for the link a pending call's client shows (empty = --approvals-url)")
	fs.DurationVar(&a.Timeout, "approvals-timeout", a.Timeout, "longest wait for the orchestrator in one check; past it the call is denied token_missing (keep it well inside Envoy's ext_authz timeout)")
	fs.StringVar(&a.CAFile, "approvals-ca-file", a.CAFile, "PEM CA bundle an https:// --approvals-url is verified against (empty = the system roots)")
	fs.StringVar(&a.PodName, "pod-name", a.PodName, "this sidecar's pod, shown to the operator with the proposals it files (empty = the host name)")
	fs.StringVar(&a.PrincipalHeader, "principal-header", a.PrincipalHeader, "request header that the Envoy in front of the sidecar sets to the authenticated agent (e.g. from jwt_authn), overwriting any a client sent (empty = trust none; the principal is then the mTLS identity)")
	env["approvals-url"] = "M1_APPROVALS_URL"
	env["approvals-token"] = "M1_APPROVALS_TOKEN"
	env["approvals-public-url"] = "M1_APPROVALS_PUBLIC_URL"
	env["approvals-timeout"] = "M1_APPROVALS_TIMEOUT"
	env["approvals-ca-file"] = "M1_APPROVALS_CA_FILE"
	env["pod-name"] = "M1_POD_NAME"
	env["principal-header"] = "M1_PRINCIPAL_HEADER"
}

// validateApprovals fails fast, naming the bad field, and fills the
// defaults that depend on others.
func (o *Options) validateApprovals() error {
	a := &o.Approvals
	a.PrincipalHeader = strings.ToLower(strings.TrimSpace(a.PrincipalHeader))
	if strings.ContainsAny(a.PrincipalHeader, " :\t") {
		return fmt.Errorf("Approvals.PrincipalHeader (M1_PRINCIPAL_HEADER) %q is not a header name", a.PrincipalHeader)
	}
	if a.PrincipalHeader != "" && (a.PrincipalHeader == o.ApprovalHeader || strings.HasPrefix(strings.ReplaceAll(a.PrincipalHeader, "_", "-"), "x-m1-")) {
		return fmt.Errorf("Approvals.PrincipalHeader (M1_PRINCIPAL_HEADER) %q: an x-m1-* header is M1's own (the sidecar removes or overwrites it); name the header Envoy sets, e.g. x-agent-id", a.PrincipalHeader)
	}
	if a.URL == "" {
		return nil
	}
	for _, u := range []struct{ name, env, v string }{{"URL", "M1_APPROVALS_URL", a.URL}, {"PublicURL", "M1_APPROVALS_PUBLIC_URL", a.PublicURL}} {
		if u.v == "" {
			continue
		}
		p, err := url.Parse(u.v)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.RawQuery != "" || p.Fragment != "" || p.User != nil {
			return fmt.Errorf("Approvals.%s (%s) %q: want http(s)://host[:port][/path], no query, fragment or user", u.name, u.env, u.v)
		}
	}
	switch {
	case a.Token == "":
		return fmt.Errorf("Approvals.Token (M1_APPROVALS_TOKEN) is required with M1_APPROVALS_URL: the orchestrator answers 401 to a sidecar without its token")
	case o.JWKSFile == "" && o.JWTSecret == "":
		return fmt.Errorf("Approvals.URL (M1_APPROVALS_URL) needs approval keys (M1_JWKS_FILE): the sidecar verifies every held approval as if the client had sent it")
	case a.Timeout <= 0 || a.Timeout > 5*time.Second:
		return fmt.Errorf("Approvals.Timeout (M1_APPROVALS_TIMEOUT) must be positive and at most 5s (keep it well inside Envoy's ext_authz timeout), got %v", a.Timeout)
	}
	if a.PublicURL == "" {
		a.PublicURL = a.URL
	}
	if a.PodName == "" {
		a.PodName, _ = os.Hostname()
	}
	if !printableLabel(a.PodName) {
		return fmt.Errorf("Approvals.PodName (M1_POD_NAME) %q: up to 128 bytes of printable ASCII without spaces", a.PodName)
	}
	return nil
}

func printableLabel(s string) bool {
	if len(s) > 128 {
		return false
	}
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// approvalsOptions returns the decision pipeline's options for o.Approvals.
func (o *Options) approvalsOptions() (string, authz.GatewayOptions, error) {
	a := o.Approvals
	if a.URL == "" {
		return a.PrincipalHeader, authz.GatewayOptions{}, nil
	}
	sidecar := "m1-authz"
	if o.Audience != "" && printableLabel(o.Audience) && len(o.Audience) <= 128-len("m1-authz/") {
		sidecar += "/" + o.Audience // the tool service it guards
	}
	copts := gateway.ClientOptions{BaseURL: a.URL, Token: a.Token, Timeout: a.Timeout, Sidecar: sidecar, Pod: a.PodName}
	if a.CAFile != "" {
		tc, err := certs.ClientConfig(a.CAFile, "", "")
		if err != nil {
			return "", authz.GatewayOptions{}, fmt.Errorf("Approvals.CAFile (M1_APPROVALS_CA_FILE): %w", err)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		copts.Transport = tr
	}
	c, err := gateway.NewClient(copts)
	if err != nil {
		return "", authz.GatewayOptions{}, fmt.Errorf("M1_APPROVALS_URL: %w", err)
	}
	return a.PrincipalHeader, authz.GatewayOptions{Approvals: c, PublicURL: a.PublicURL, Timeout: a.Timeout}, nil
}
