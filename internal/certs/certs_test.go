package certs_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/certs/certstest"
)

// echoServer serves cfg on a loopback port: each line a client sends comes
// back.
func echoServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// dial connects and completes the handshake.
func dial(t *testing.T, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	// TLS 1.3: a refused client certificate shows at the first read.
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return nil, err
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		return nil, err
	}
	return c, nil
}

func echo(c *tls.Conn) error {
	if _, err := c.Write([]byte("again\n")); err != nil {
		return err
	}
	_, err := bufio.NewReader(c).ReadString('\n')
	return err
}

func clientConfig(t *testing.T, ca *certstest.CA) *tls.Config {
	t.Helper()
	cfg, err := certs.ClientConfig(ca.File, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestRotationUnderLiveConnection(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	r, err := certs.NewReloader(srv.CertFile, srv.KeyFile, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, r.Config("m1-test"))

	old, err := dial(t, addr, clientConfig(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(srv.Cert.SerialNumber) != 0 {
		t.Fatalf("first handshake: serial %v, want %v", got, srv.Cert.SerialNumber)
	}

	rotated := ca.IssueTo(t, certstest.Options{CommonName: "rotated", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, srv.CertFile, srv.KeyFile)
	fresh, err := dial(t, addr, clientConfig(t, ca))
	if err != nil {
		t.Fatalf("handshake after rotation: %v", err)
	}
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(rotated.SerialNumber) != 0 {
		t.Errorf("handshake after rotation: serial %v, want the new certificate's %v", got, rotated.SerialNumber)
	}
	if err := echo(old); err != nil {
		t.Errorf("connection made before the rotation: %v, want it to keep working", err)
	}
	if st := r.Status(); st.LastError != "" || st.Subject != "CN=rotated" {
		t.Errorf("Status() = %+v, want the rotated certificate and no error", st)
	}
}

// A rotation seen half-written (the new certificate, the old key) keeps the
// old pair in use until the key arrives.
func TestHalfWrittenRotationKeepsTheOldCertificate(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	srv := ca.Server(t)
	r, err := certs.NewReloader(srv.CertFile, srv.KeyFile, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := echoServer(t, r.Config())

	next := ca.Issue(t, certstest.Options{CommonName: "next", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	copyFile(t, next.CertFile, srv.CertFile) // the key is still the old one
	c, err := dial(t, addr, clientConfig(t, ca))
	if err != nil {
		t.Fatalf("handshake during a half-written rotation: %v", err)
	}
	if got := c.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(srv.Cert.SerialNumber) != 0 {
		t.Errorf("half-written rotation: serial %v, want the old certificate's %v", got, srv.Cert.SerialNumber)
	}
	if st := r.Status(); !strings.Contains(st.LastError, "private key does not match") {
		t.Errorf("Status().LastError = %q, want the mismatch", st.LastError)
	}

	copyFile(t, next.KeyFile, srv.KeyFile)
	c, err = dial(t, addr, clientConfig(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(next.Cert.SerialNumber) != 0 {
		t.Errorf("completed rotation: serial %v, want %v", got, next.Cert.SerialNumber)
	}
	if st := r.Status(); st.LastError != "" {
		t.Errorf("Status().LastError = %q after a good load, want none", st.LastError)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestClientCertificates(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	other := certstest.NewCA(t, "another CA")
	srv := ca.Server(t)
	r, err := certs.NewReloader(srv.CertFile, srv.KeyFile, ca.File, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.MutualTLS() {
		t.Error("MutualTLS() = false with a client CA")
	}
	addr := echoServer(t, r.MutualConfig())
	const id = "spiffe://example.org/ns/agents/sa/planner"
	good, wrongCA := ca.Client(t, id), other.Client(t, id)

	tests := []struct {
		name   string
		client *certstest.Pair
		ok     bool
	}{
		{"no client certificate", nil, false},
		{"certificate of another CA", &wrongCA, false},
		{"certificate of the client CA", &good, true},
	}
	if _, err := dial(t, echoServer(t, r.Config()), clientConfig(t, ca)); err != nil {
		t.Errorf("Config() (no client certificates asked for), no client certificate: %v", err)
	}
	for _, tt := range tests {
		cfg := clientConfig(t, ca)
		if tt.client != nil {
			cfg, err = certs.ClientConfig(ca.File, tt.client.CertFile, tt.client.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
		}
		_, err := dial(t, addr, cfg)
		if (err == nil) != tt.ok {
			t.Errorf("handshake (%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func TestNewReloaderRefuses(t *testing.T) {
	ca := certstest.NewCA(t, "m1 test CA")
	a, b := ca.Server(t), ca.Server(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                string
		cert, key, clientCA string
		want                string
	}{
		{"no key", a.CertFile, "", "", "both required"},
		{"missing file", filepath.Join(dir, "nope.crt"), a.KeyFile, "", "no such file"},
		{"key of another certificate", a.CertFile, b.KeyFile, "", "does not match"},
		{"junk certificate", junk, a.KeyFile, "", "junk.pem"},
		{"CA file without certificates", a.CertFile, a.KeyFile, junk, "holds no PEM certificate"},
	}
	for _, tt := range tests {
		_, err := certs.NewReloader(tt.cert, tt.key, tt.clientCA, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewReloader(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestSPIFFEID(t *testing.T) {
	uris := func(ss ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, s := range ss {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	tests := []struct {
		name string
		cert *x509.Certificate
		want string
	}{
		{"none", uris(), ""},
		{"one", uris("spiffe://example.org/ns/a/sa/b"), "spiffe://example.org/ns/a/sa/b"},
		{"beside another scheme", uris("https://example.org/x", "spiffe://example.org/w"), "spiffe://example.org/w"},
		{"two: ambiguous", uris("spiffe://example.org/a", "spiffe://example.org/b"), ""},
		{"no trust domain", uris("spiffe:///a"), ""},
	}
	for _, tt := range tests {
		if got := certs.SPIFFEID(tt.cert); got != tt.want {
			t.Errorf("SPIFFEID(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
