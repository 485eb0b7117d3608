package orchestratord

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/certs/certstest"
)

// The HTTP port serves HTTPS with M1_TLS_CERT_FILE, HSTS on every answer,
// and a rotated certificate at the next handshake while an open
// connection keeps working.
func TestHTTPS(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	o := testOptions(t, jwks)
	o.AdminToken = "secret-token"
	o.TLSCertFile, o.TLSKeyFile = srv.CertFile, srv.KeyFile
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "https://" + s.Addr().String()
	client := func() *http.Client {
		cfg, err := certs.ClientConfig(ca.File, "", "")
		if err != nil {
			t.Fatal(err)
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	get := func(c *http.Client, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer secret-token")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}

	live := client()
	for _, path := range []string{"/health", "/v1/proposals"} {
		resp := get(live, path)
		if resp.StatusCode != 200 {
			t.Errorf("GET %s over HTTPS = %d, want 200", path, resp.StatusCode)
		}
		if h := resp.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(h, "max-age=") {
			t.Errorf("GET %s over HTTPS: Strict-Transport-Security = %q, want HSTS", path, h)
		}
	}

	rotated := ca.IssueTo(t, certstest.Options{CommonName: "rotated", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, srv.CertFile, srv.KeyFile)
	resp := get(client(), "/health")
	if resp.TLS == nil || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(rotated.SerialNumber) != 0 {
		t.Errorf("new connection after the rotation: serial %v, want the rotated %v", resp.TLS.PeerCertificates[0].SerialNumber, rotated.SerialNumber)
	}
	resp = get(live, "/health")
	if resp.StatusCode != 200 || resp.TLS.PeerCertificates[0].SerialNumber.Cmp(srv.Cert.SerialNumber) != 0 {
		t.Errorf("connection made before the rotation: %d with serial %v, want 200 on the old connection (%v)", resp.StatusCode, resp.TLS.PeerCertificates[0].SerialNumber, srv.Cert.SerialNumber)
	}

	// No certificate the client trusts: no answer.
	if _, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{}}}).Get(base + "/health"); err == nil {
		t.Error("GET /health with the system roots succeeded, want an unknown authority")
	}
}

func TestTLSOptionsRefused(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	ca := certstest.NewCA(t, "m1 test CA")
	a, b := ca.Server(t), ca.Server(t)
	for _, tc := range []struct {
		name      string
		cert, key string
		want      string
	}{
		{"certificate without key", a.CertFile, "", "M1_TLS_KEY_FILE"},
		{"key of another certificate", a.CertFile, b.KeyFile, "M1_TLS_CERT_FILE"},
	} {
		o := testOptions(t, jwks)
		o.TLSCertFile, o.TLSKeyFile = tc.cert, tc.key
		if s, err := New(context.Background(), o); err == nil || !strings.Contains(err.Error(), tc.want) {
			if s != nil {
				s.Stop(context.Background())
			}
			t.Errorf("New(%s) = %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
}
