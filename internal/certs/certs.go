// Package certs serves and trusts the TLS certificates of M1's listeners
// (DESIGN §8): the server certificate and key of M1_TLS_CERT_FILE and
// M1_TLS_KEY_FILE, reloaded when the files change, the client CA of
// M1_TLS_CLIENT_CA_FILE that makes gRPC mutual TLS, the SPIFFE identity of
// a verified peer, and the client side of the m1 commands (--ca-file).
package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Log field names.
const (
	fieldCertFile = "cert_file"
	fieldNotAfter = "not_after"
)

// Reloader serves a certificate and key from files, and verifies client
// certificates against a CA file when one is set. Every TLS handshake
// stats the files (a few microseconds, and handshakes are rare: Envoy and
// HTTP clients keep their connections) and, when one changed (another
// inode, size or modification time: an in-place write, a rename, a
// Kubernetes Secret's symlink swap), loads them again. Connections already
// established keep the certificate they were set up with; the next
// handshake gets the new one. Files that do not load (a key that does not
// match its certificate while a rotation is half-written, a bad PEM) leave
// the previous certificate and CA in use; Status reports the error until a
// load succeeds, and the next handshake tries again. Its methods are safe
// for concurrent use.
type Reloader struct {
	certFile, keyFile, caFile string
	log                       *zap.Logger

	cur atomic.Pointer[loaded]
	mu  sync.Mutex // serializes loads; guards lastErr
	// lastErr is the last load's error, "" once a load succeeds.
	lastErr string
}

// loaded is one successful load of the files.
type loaded struct {
	cert   *tls.Certificate
	pool   *x509.CertPool // nil without a client CA
	stamps []fileStamp    // of certFile, keyFile and caFile when set
	at     time.Time
}

// fileStamp tells whether a file changed since it was loaded.
type fileStamp struct {
	info os.FileInfo
}

func stat(path string) (fileStamp, error) {
	fi, err := os.Stat(path) // follows symlinks: a Secret's ..data swap changes the target
	return fileStamp{fi}, err
}

func (s fileStamp) same(o fileStamp) bool {
	return s.info != nil && o.info != nil && os.SameFile(s.info, o.info) &&
		s.info.Size() == o.info.Size() && s.info.ModTime().Equal(o.info.ModTime())
}

// NewReloader loads certFile and keyFile (PEM; the key must match the
// certificate) and, when caFile is set, the client CA bundle, and fails
// when they do not load: a process must not start without its
// certificate. logger may be nil.
func NewReloader(certFile, keyFile, caFile string, logger *zap.Logger) (*Reloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("certs: a certificate file and a key file are both required")
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, caFile: caFile, log: logger}
	l, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur.Store(l)
	return r, nil
}

// load reads the files, stamps first: a change while reading is seen at
// the next handshake.
func (r *Reloader) load() (*loaded, error) {
	paths := []string{r.certFile, r.keyFile}
	if r.caFile != "" {
		paths = append(paths, r.caFile)
	}
	l := &loaded{at: time.Now()}
	for _, p := range paths {
		s, err := stat(p)
		if err != nil {
			return nil, fmt.Errorf("certs: %w", err)
		}
		l.stamps = append(l.stamps, s)
	}
	cert, err := LoadKeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, err
	}
	l.cert = cert
	if r.caFile != "" {
		if l.pool, _, err = LoadCAs(r.caFile); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// current returns the files' latest good load, loading them again first
// when one changed.
func (r *Reloader) current() *loaded {
	l := r.cur.Load()
	if !r.changed(l) {
		return l
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l = r.cur.Load(); !r.changed(l) { // another handshake reloaded them
		return l
	}
	nl, err := r.load()
	if err != nil {
		if msg := err.Error(); msg != r.lastErr { // once per distinct error, not per handshake
			r.lastErr = msg
			r.log.Error("TLS files changed but do not load; the previous certificate stays in use", zap.String(fieldCertFile, r.certFile), zap.Error(err))
		}
		return l
	}
	r.lastErr = ""
	r.cur.Store(nl)
	r.log.Info("TLS certificate reloaded", zap.String(fieldCertFile, r.certFile), zap.Time(fieldNotAfter, nl.cert.Leaf.NotAfter))
	return nl
}

// changed reports whether one of l's files is no longer the one loaded.
func (r *Reloader) changed(l *loaded) bool {
	paths := []string{r.certFile, r.keyFile, r.caFile}
	for i, s := range l.stamps {
		now, err := stat(paths[i])
		if err != nil || !now.same(s) {
			return true
		}
	}
	return false
}

// Config returns the server TLS configuration of one listener: TLS 1.2 or
// later and the current certificate at each handshake; no client
// certificate is asked for. alpn lists the application protocols the
// listener speaks ("h2", "http/1.1" for HTTP).
func (r *Reloader) Config(alpn ...string) *tls.Config { return r.config(false, alpn) }

// MutualConfig is Config with, when the Reloader has a client CA, a client
// certificate required and verified against it at each handshake (the
// gRPC port: "h2").
func (r *Reloader) MutualConfig(alpn ...string) *tls.Config { return r.config(true, alpn) }

func (r *Reloader) config(mutual bool, alpn []string) *tls.Config {
	alpn = slices.Clone(alpn)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: alpn,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			l := r.current()
			c := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				NextProtos:   alpn,
				Certificates: []tls.Certificate{*l.cert},
			}
			if mutual && l.pool != nil {
				c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, l.pool
			}
			return c, nil
		},
	}
}

// MutualTLS reports whether client certificates are required.
func (r *Reloader) MutualTLS() bool { return r.caFile != "" }

// Status is a Reloader's state, for /health.
type Status struct {
	CertFile     string    `json:"cert_file"`
	ClientCAFile string    `json:"client_ca_file,omitempty"`
	Subject      string    `json:"subject"`
	Names        []string  `json:"names"` // the certificate's DNS, IP and URI SANs
	NotAfter     time.Time `json:"not_after"`
	LoadedAt     time.Time `json:"loaded_at"`
	LastError    string    `json:"last_error,omitempty"` // the last reload's error, the old certificate in use
}

// ExpiryWarning is how long before its NotAfter a certificate is reported
// as expiring (m1 preflight warns, /health is degraded): two weeks, time
// for a failed automatic renewal to be noticed and fixed.
const ExpiryWarning = 14 * 24 * time.Hour

// Problem is what an operator must know about s at now, or "": the last
// reload failed, the certificate expired or expires within ExpiryWarning.
func (s Status) Problem(now time.Time) string {
	var p []string
	if s.LastError != "" {
		p = append(p, "the files changed but do not load, the previous certificate stays in use: "+s.LastError)
	}
	switch left := s.NotAfter.Sub(now); {
	case left <= 0:
		p = append(p, fmt.Sprintf("the certificate expired at %s", s.NotAfter.UTC().Format(time.RFC3339)))
	case left < ExpiryWarning:
		p = append(p, fmt.Sprintf("the certificate expires in %s (%s)", left.Round(time.Hour), s.NotAfter.UTC().Format(time.RFC3339)))
	}
	return strings.Join(p, "; ")
}

// Status returns the certificate in use and the last reload error. It
// checks the files first, as a handshake would.
func (r *Reloader) Status() Status {
	l := r.current()
	r.mu.Lock()
	defer r.mu.Unlock()
	return Status{
		CertFile: r.certFile, ClientCAFile: r.caFile,
		Subject: l.cert.Leaf.Subject.String(), Names: Names(l.cert.Leaf),
		NotAfter: l.cert.Leaf.NotAfter, LoadedAt: l.at, LastError: r.lastErr,
	}
}

// LoadKeyPair loads a PEM certificate chain and its private key, failing
// when the key does not match the certificate. Leaf is set.
func LoadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certs: load %s and %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certs: parse %s: %w", certFile, err)
		}
	}
	return &cert, nil
}

// LoadCAs loads a PEM bundle of CA certificates; it fails when the file
// holds none.
func LoadCAs(file string) (*x509.CertPool, []*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	var certs []*x509.Certificate
	for rest := b; ; {
		var der []byte
		if der, rest = nextCertificate(rest); der == nil {
			break
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("certs: parse CA in %s: %w", file, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("certs: %s holds no PEM certificate", file)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}

// Names lists a certificate's subject alternative names: DNS names, IP
// addresses and URIs.
func Names(c *x509.Certificate) []string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	for _, u := range c.URIs {
		names = append(names, u.String())
	}
	return names
}

// SPIFFEID returns the certificate's SPIFFE ID: its one URI SAN with the
// spiffe scheme and a trust domain, or "" when it has none, or more than
// one (an X.509 SVID has exactly one).
func SPIFFEID(c *x509.Certificate) string {
	id := ""
	for _, u := range c.URIs {
		if !strings.EqualFold(u.Scheme, "spiffe") || u.Host == "" {
			continue
		}
		if id != "" {
			return ""
		}
		id = u.String()
	}
	return id
}
