package sidecar

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/certs/certstest"
)

// allowedReadCall is a REST read_file call the default policy allows without a
// token, from no source principal.
func allowedReadCall() *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/read_file", Host: "tools.local",
			Headers: map[string]string{"content-type": "application/json"}, Body: `{"path":"/etc/hosts"}`},
	}}}
}

// tlsClient dials s's gRPC port over TLS with cfg; seen records the serial
// of each server certificate the client verified.
func tlsClient(t *testing.T, s *Server, cfg *tls.Config, seen *serials) authv3.AuthorizationClient {
	t.Helper()
	if seen != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			seen.add(cs.PeerCertificates[0].SerialNumber)
			return nil
		}
	}
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn)
}

type serials struct {
	mu   sync.Mutex
	list []*big.Int
}

func (s *serials) add(n *big.Int) { s.mu.Lock(); s.list = append(s.list, n); s.mu.Unlock() }
func (s *serials) last() *big.Int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.list) == 0 {
		return nil
	}
	return s.list[len(s.list)-1]
}

func principalOf(resp *authv3.CheckResponse) string {
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == authz.HeaderPrincipal {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func TestMutualTLSPrincipal(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	o := testOptions(t)
	o.TLSCertFile, o.TLSKeyFile, o.TLSClientCAFile = srv.CertFile, srv.KeyFile, ca.File
	s := startServer(t, o)
	const id = "spiffe://example.org/ns/agents/sa/planner"
	agent := ca.Client(t, id)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	noCert, err := certs.ClientConfig(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := tlsClient(t, s, noCert, nil).Check(ctx, allowedReadCall()); err == nil {
		t.Errorf("Check without a client certificate = %v, want the connection refused", resp)
	}

	withCert, err := certs.ClientConfig(ca.File, agent.CertFile, agent.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	c := tlsClient(t, s, withCert, nil)
	resp, err := c.Check(ctx, allowedReadCall())
	if err != nil {
		t.Fatalf("Check with a client certificate: %v", err)
	}
	if got := principalOf(resp); got != id {
		t.Errorf("principal = %q, want the client certificate's SPIFFE ID %q (no token, no source principal)", got, id)
	}
	req := allowedReadCall()
	req.Attributes.Source = &authv3.AttributeContext_Peer{Principal: "spiffe://example.org/ns/agents/sa/downstream"}
	if resp, err = c.Check(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := principalOf(resp); got != "spiffe://example.org/ns/agents/sa/downstream" {
		t.Errorf("principal = %q, want the source principal Envoy reported, ahead of the peer's", got)
	}

	// Client certificates are gRPC's: the admin port asks for none (its
	// API has the bearer token; the kubelet and Prometheus have no
	// certificate).
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: noCert}}
	hresp, err := hc.Get("https://" + s.AdminAddr().String() + "/health/live")
	if err != nil {
		t.Fatalf("GET https /health/live without a client certificate: %v", err)
	}
	hresp.Body.Close()
	if hresp.StatusCode != 200 {
		t.Errorf("GET https /health/live = %d, want 200", hresp.StatusCode)
	}
}

// Rotating the certificate files under a live gRPC connection: the
// connection keeps working, a new one gets the new certificate.
func TestTLSRotationUnderLiveConnection(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	o := testOptions(t)
	o.TLSCertFile, o.TLSKeyFile = srv.CertFile, srv.KeyFile
	s := startServer(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	clientCfg := func() *tls.Config {
		cfg, err := certs.ClientConfig(ca.File, "", "")
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}

	var before, after serials
	live := tlsClient(t, s, clientCfg(), &before)
	if _, err := live.Check(ctx, allowedReadCall()); err != nil {
		t.Fatal(err)
	}
	rotated := ca.IssueTo(t, certstest.Options{CommonName: "rotated", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, srv.CertFile, srv.KeyFile)

	if _, err := tlsClient(t, s, clientCfg(), &after).Check(ctx, allowedReadCall()); err != nil {
		t.Fatalf("Check on a new connection after the rotation: %v", err)
	}
	if got := after.last(); got == nil || got.Cmp(rotated.SerialNumber) != 0 {
		t.Errorf("new connection's server certificate serial = %v, want the rotated %v", got, rotated.SerialNumber)
	}
	if resp, err := live.Check(ctx, allowedReadCall()); err != nil || resp.GetOkResponse() == nil {
		t.Errorf("Check on the connection made before the rotation = %v, %v; want it to keep working", resp, err)
	}
	if got := before.last(); got == nil || got.Cmp(srv.Cert.SerialNumber) != 0 || len(before.list) != 1 {
		t.Errorf("connection made before the rotation: serials %v, want one handshake with %v", before.list, srv.Cert.SerialNumber)
	}

	// The admin port serves the same files: HTTPS with HSTS, the rotated
	// certificate on /health.
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + s.AdminAddr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.TLS == nil || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(rotated.SerialNumber) != 0 {
		t.Errorf("GET https /health = %d (TLS %v), want 200 with the rotated certificate", resp.StatusCode, resp.TLS != nil)
	}
	if h := resp.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(h, "max-age=") {
		t.Errorf("HTTPS /health Strict-Transport-Security = %q, want HSTS", h)
	}
	var rep struct {
		Checks map[string]struct {
			Status string         `json:"status"`
			Info   map[string]any `json:"info"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	if c := rep.Checks["tls"]; c.Status != "ok" || c.Info["subject"] != "CN=rotated" {
		t.Errorf("/health checks.tls = %+v, want ok with the rotated certificate", c)
	}

	// Plain HTTP to the HTTPS port is refused.
	if resp, err := http.Get("http://" + s.AdminAddr().String() + "/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the HTTPS admin port = %d, want 400", resp.StatusCode)
		}
	}
}

func TestTLSHealthWarnsBeforeExpiry(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Issue(t, certstest.Options{CommonName: "short", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, NotAfter: time.Now().Add(72 * time.Hour)})
	o := testOptions(t)
	o.TLSCertFile, o.TLSKeyFile = srv.CertFile, srv.KeyFile
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.tlsCheck(); c.Status != "degraded" || !strings.Contains(c.Detail, "expires in") {
		t.Errorf("tlsCheck() with 3 days left = %+v, want degraded, naming the expiry", c)
	}
}
