package test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"math/big"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/certs/certstest"
)

// runM1 runs the m1 binary with args and env (KEY=VALUE, over the test's
// clean environment) and returns its exit status and combined output.
func runM1(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cliPath, args...)
	cmd.Env = append(cleanEnv(), env...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatalf("m1 %v: %v", args, err)
	}
	return 0, string(out)
}

// TestTLS runs m1-authz with M1_TLS_* (mutual TLS on gRPC) and the m1
// binary against it, then rotates the certificate files under a live
// connection.
func TestTLS(t *testing.T) {
	ca := certstest.NewCA(t, "m1 e2e CA")
	srv := ca.Server(t)
	const agent = "spiffe://example.org/ns/agents/sa/e2e"
	client := ca.Client(t, agent)
	s := startSidecar(t, nil, "M1_TLS_CERT_FILE="+srv.CertFile, "M1_TLS_KEY_FILE="+srv.KeyFile, "M1_TLS_CLIENT_CA_FILE="+ca.File)
	grpcURL, adminURL := "https://"+s.GRPCAddr, "https://"+s.AdminAddr
	read := []string{"--json", "--tool", "read_file", "--args", `{"path":"/etc/hosts"}`}
	cert := []string{"M1_CA_FILE=" + ca.File, "M1_CLIENT_CERT_FILE=" + client.CertFile, "M1_CLIENT_KEY_FILE=" + client.KeyFile}

	code, out := runM1(t, cert, append([]string{"check", "--addr", grpcURL}, read...)...)
	var res struct {
		Decision string            `json:"decision"`
		Headers  map[string]string `json:"headers"`
	}
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || res.Decision != "allow" || res.Headers["x-m1-principal"] != agent {
		t.Fatalf("m1 check over mutual TLS: exit %d, %s; want an allow for principal %s", code, out, agent)
	}
	if code, out := runM1(t, []string{"M1_CA_FILE=" + ca.File}, append([]string{"check", "--addr", grpcURL}, read...)...); code != 2 {
		t.Errorf("m1 check without a client certificate: exit %d, %s; want 2 (refused)", code, out)
	}
	if code, out := runM1(t, nil, "health", "--url", adminURL+"/health/live"); code != 2 || !strings.Contains(out, "certificate") {
		t.Errorf("m1 health over https without the CA: exit %d, %s; want 2", code, out)
	}

	// A live connection, made before the rotation.
	var (
		mu      sync.Mutex
		serials []*big.Int
	)
	cfg, err := certs.ClientConfig(ca.File, client.CertFile, client.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		mu.Lock()
		defer mu.Unlock()
		serials = append(serials, cs.PeerCertificates[0].SerialNumber)
		return nil
	}
	conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	live := authv3.NewAuthorizationClient(conn)
	readCall := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/read_file", Host: "tools.local",
			Headers: map[string]string{"content-type": "application/json"}, Body: `{"path":"/etc/hosts"}`},
	}}}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if _, err := live.Check(ctx, readCall); err != nil {
		t.Fatal(err)
	}

	rotated := ca.IssueTo(t, certstest.Options{CommonName: "rotated", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, srv.CertFile, srv.KeyFile)
	code, out = runM1(t, []string{"M1_CA_FILE=" + ca.File}, "health", "--url", adminURL+"/health")
	if code != 0 || !strings.Contains(out, `"subject": "CN=rotated"`) {
		t.Errorf("m1 health after the rotation: exit %d, %s; want checks.tls naming the rotated certificate", code, out)
	}
	if code, out := runM1(t, cert, append([]string{"check", "--addr", grpcURL}, read...)...); code != 0 {
		t.Errorf("m1 check after the rotation: exit %d, %s", code, out)
	}
	if resp, err := live.Check(ctx, readCall); err != nil || resp.GetOkResponse() == nil {
		t.Errorf("Check on the connection made before the rotation = %v, %v; want it to keep working", resp, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(serials) != 1 || serials[0].Cmp(srv.Cert.SerialNumber) != 0 {
		t.Errorf("live connection's handshakes saw serials %v, want one, the first certificate's %v", serials, srv.Cert.SerialNumber)
	}
	if rotated.SerialNumber.Cmp(srv.Cert.SerialNumber) == 0 {
		t.Fatal("the rotated certificate has the old serial")
	}
}
