package cli

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/certs/certstest"
	"github.com/m1-agent/m1/internal/sidecar"
)

const agentSPIFFEID = "spiffe://example.org/ns/agents/sa/planner"

// tlsSidecar is an in-process m1-authz serving TLS on both ports, with
// gRPC requiring client certificates of ca.
type tlsSidecar struct {
	ca              *certstest.CA
	grpcAddr, admin string // host:port
	client          certstest.Pair
}

func startTLSSidecar(t *testing.T) tlsSidecar {
	t.Helper()
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	ctx := context.Background()
	opts := sidecar.DefaultOptions()
	opts.GRPCAddr, opts.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.AdminToken = e2eAdminToken
	opts.DataDir = t.TempDir()
	opts.TLSCertFile, opts.TLSKeyFile, opts.TLSClientCAFile = srv.CertFile, srv.KeyFile, ca.File
	opts.Logger = zap.NewNop()
	reg := prometheus.NewRegistry()
	opts.Registerer, opts.Gatherer = reg, reg
	s, err := sidecar.New(ctx, opts)
	if err != nil {
		t.Fatalf("sidecar.New: %v", err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatalf("sidecar.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return tlsSidecar{ca: ca, grpcAddr: s.Addr().String(), admin: s.AdminAddr().String(), client: ca.Client(t, agentSPIFFEID)}
}

func TestCommandsOverTLS(t *testing.T) {
	sc := startTLSSidecar(t)
	other := certstest.NewCA(t, "another CA")
	read := []string{"--json", "--tool", "read_file", "--args", `{"path":"/etc/hosts"}`}
	clientCert := []string{"--cert-file", sc.client.CertFile, "--key-file", sc.client.KeyFile}
	tests := []struct {
		name       string
		env        map[string]string
		args       []string
		wantCode   int
		wantOut    string
		wantStderr string
	}{
		{
			name:     "check with a client certificate: the SAN is the principal",
			args:     append(append([]string{"--addr", "https://" + sc.grpcAddr, "--ca-file", sc.ca.File}, clientCert...), read...),
			wantCode: exitOK, wantOut: `"x-m1-principal":"` + agentSPIFFEID + `"`,
		},
		{
			name:     "check: files from the environment, a bare address",
			env:      map[string]string{"M1_AUTHZ_ADDR": sc.grpcAddr, "M1_CA_FILE": sc.ca.File, "M1_CLIENT_CERT_FILE": sc.client.CertFile, "M1_CLIENT_KEY_FILE": sc.client.KeyFile},
			args:     read,
			wantCode: exitOK, wantOut: agentSPIFFEID,
		},
		{
			name:     "check: --principal beats the certificate",
			args:     append(append([]string{"--addr", "https://" + sc.grpcAddr, "--ca-file", sc.ca.File, "--principal", "spiffe://example.org/downstream"}, clientCert...), read...),
			wantCode: exitOK, wantOut: `"x-m1-principal":"spiffe://example.org/downstream"`,
		},
		{
			name:     "check without a client certificate is refused",
			args:     append([]string{"--addr", "https://" + sc.grpcAddr, "--ca-file", sc.ca.File}, read...),
			wantCode: exitError, wantStderr: "check at " + sc.grpcAddr,
		},
		{
			name:     "check against a CA that did not sign the server",
			args:     append(append([]string{"--addr", "https://" + sc.grpcAddr, "--ca-file", other.File}, clientCert...), read...),
			wantCode: exitError, wantStderr: "certificate signed by unknown authority",
		},
		{
			name:     "check with a certificate and no key",
			args:     append([]string{"--addr", "https://" + sc.grpcAddr, "--cert-file", sc.client.CertFile}, read...),
			wantCode: exitError, wantStderr: "--cert-file and --key-file go together",
		},
		{
			name:     "health over https",
			args:     []string{"health", "--url", "https://" + sc.admin + "/health/live", "--ca-file", sc.ca.File},
			wantCode: exitOK, wantOut: `"status": "ok"`,
		},
		{
			name:     "health over https without the CA",
			args:     []string{"health", "--url", "https://" + sc.admin + "/health/live"},
			wantCode: exitError, wantStderr: "certificate",
		},
		{
			name:     "revoke over https",
			env:      map[string]string{"M1_ADMIN_TOKEN": e2eAdminToken, "M1_CA_FILE": sc.ca.File},
			args:     []string{"revoke", "--sub", "agent-7", "--admin-url", "https://" + sc.admin},
			wantCode: exitOK, wantOut: `"agent-7"`,
		},
		{
			name:     "revoke over https with a missing CA file",
			env:      map[string]string{"M1_ADMIN_TOKEN": e2eAdminToken},
			args:     []string{"revoke", "--list", "--admin-url", "https://" + sc.admin, "--ca-file", filepath.Join(t.TempDir(), "nope.crt")},
			wantCode: exitError, wantStderr: "no such file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if !strings.HasPrefix(tt.name, "health") && !strings.HasPrefix(tt.name, "revoke") {
				args = append([]string{"check"}, args...)
			}
			r := m1With(t, tt.env, "", args...)
			if r.code != tt.wantCode || !strings.Contains(r.stdout, tt.wantOut) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %q: exit %d, want %d, stdout with %q, stderr with %q\n%s", args, r.code, tt.wantCode, tt.wantOut, tt.wantStderr, r)
			}
		})
	}
}

// m1 approve and m1 reject against an orchestrator serving https.
func TestApproveOverTLS(t *testing.T) {
	p1 := proposal(t, "p-1", "read_file", `{"path":"/tmp/y"}`, "read")
	f := newFakeOrchestrator(t, p1, proposal(t, "p-2", "write_file", `{}`, "write"))
	ca := certstest.NewCA(t, "m1 test CA")
	pair := ca.Server(t)
	cert, err := certs.LoadKeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f.srv.Config.Handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	env, jwks := approveEnv(t, f)
	env["M1_ORCHESTRATOR_URL"] = srv.URL
	if !strings.HasPrefix(srv.URL, "https://") {
		t.Fatalf("orchestrator URL %s, want https", srv.URL)
	}

	if r := m1With(t, env, "", "approve", "p-1"); r.code != exitError || !strings.Contains(r.stderr, "certificate") {
		t.Errorf("m1 approve over https without the CA: exit %d, want 2 naming the certificate\n%s", r.code, r)
	}
	if r := m1With(t, env, "", "approve", "p-1", "--ca-file", ca.File); r.code != exitOK {
		t.Fatalf("m1 approve --ca-file over https: %s", r)
	}
	approvals, _ := f.received()
	if len(approvals) != 1 || approvals[0].id != "p-1" {
		t.Fatalf("orchestrator received approvals %v, want p-1's", approvals)
	}
	checkApproval(t, jwks, approvals[0].token, p1, "alice")

	env["M1_CA_FILE"] = ca.File
	if r := m1With(t, env, "", "reject", "p-2", "--reason", "no"); r.code != exitOK || !strings.Contains(r.stdout, "rejected proposal p-2") {
		t.Errorf("m1 reject over https with $M1_CA_FILE: %s", r)
	}
}

// The HTTP clients keep refusing redirects where they did (revoke,
// health), and a plain http:// URL ignores --ca-file.
func TestTLSFlagsHTTPClient(t *testing.T) {
	var tf tlsFlags
	c, err := tf.httpClient()
	if err != nil {
		t.Fatal(err)
	}
	if c.CheckRedirect(nil, nil) != http.ErrUseLastResponse {
		t.Error("httpClient follows redirects; want the last response")
	}
	for _, tt := range []struct {
		addr, ca, want string
		tls            bool
	}{
		{"127.0.0.1:9191", "", "127.0.0.1:9191", false},
		{"https://127.0.0.1:9191", "", "127.0.0.1:9191", true},
		{"http://127.0.0.1:9191/", "", "127.0.0.1:9191", false},
		{"127.0.0.1:9191", "testdata-ca", "127.0.0.1:9191", true},
	} {
		tf := tlsFlags{caFile: tt.ca}
		target, cfg, err := tf.grpcTarget(tt.addr)
		if tt.ca != "" { // the file does not exist: TLS was attempted
			if err == nil || !strings.Contains(err.Error(), "testdata-ca") {
				t.Errorf("grpcTarget(%q, CA %q) = %v, want TLS (the CA file read)", tt.addr, tt.ca, err)
			}
			continue
		}
		if err != nil || target != tt.want || (cfg != nil) != tt.tls {
			t.Errorf("grpcTarget(%q) = %q, TLS %v, %v; want %q, TLS %v", tt.addr, target, cfg != nil, err, tt.want, tt.tls)
		}
	}
	if _, _, err := (&tlsFlags{}).grpcTarget("https://no-port"); err == nil {
		t.Error(`grpcTarget("https://no-port") = nil error, want host:port refused`)
	}
}
