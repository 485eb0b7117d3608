package cli

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/m1-agent/m1/internal/certs"
)

// tlsFlags are the TLS flags of the commands that call an M1 server: the
// CA that verifies an https:// server (DESIGN §8) and, for gRPC to a
// sidecar with M1_TLS_CLIENT_CA_FILE, a client certificate.
type tlsFlags struct {
	caFile, certFile, keyFile string
}

// register defines --ca-file ($M1_CA_FILE) and, with clientCert,
// --cert-file and --key-file ($M1_CLIENT_CERT_FILE, $M1_CLIENT_KEY_FILE).
// The client pair has its own variables: M1_TLS_CERT_FILE in a pod is the
// server's certificate, not a client's.
func (f *tlsFlags) register(fs *flagSet, clientCert bool) {
	if fs.env == nil {
		fs.env = map[string]string{}
	}
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA `file` that verifies the server's certificate over TLS (empty = the system roots)")
	fs.env["ca-file"] = "M1_CA_FILE"
	if clientCert {
		fs.StringVar(&f.certFile, "cert-file", "", "PEM client certificate `file` for mutual TLS (m1-authz with M1_TLS_CLIENT_CA_FILE); implies TLS")
		fs.StringVar(&f.keyFile, "key-file", "", "PEM private key `file` of --cert-file")
		fs.env["cert-file"], fs.env["key-file"] = "M1_CLIENT_CERT_FILE", "M1_CLIENT_KEY_FILE"
	}
}

// config loads the files into a client TLS configuration.
func (f *tlsFlags) config() (*tls.Config, error) {
	if (f.certFile == "") != (f.keyFile == "") {
		return nil, errors.New("--cert-file and --key-file go together")
	}
	return certs.ClientConfig(f.caFile, f.certFile, f.keyFile)
}

// httpClient returns a client that verifies https:// servers against
// --ca-file; redirects are not followed. Plain http:// URLs work as before.
func (f *tlsFlags) httpClient() (*http.Client, error) {
	cfg, err := f.config()
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// grpcTarget reads an m1-authz gRPC address: "https://host:port" is TLS,
// "http://host:port" plaintext, and a bare "host:port" TLS when a CA or a
// client certificate is given, else plaintext. It returns the host:port
// to dial and the TLS configuration (nil for plaintext).
func (f *tlsFlags) grpcTarget(addr string) (string, *tls.Config, error) {
	hostport, useTLS := addr, f.caFile != "" || f.certFile != ""
	switch {
	case strings.HasPrefix(addr, "https://"):
		hostport, useTLS = strings.TrimPrefix(addr, "https://"), true
	case strings.HasPrefix(addr, "http://"):
		hostport, useTLS = strings.TrimPrefix(addr, "http://"), false
	}
	hostport = strings.TrimSuffix(hostport, "/")
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return "", nil, fmt.Errorf("address %q: want host:port or https://host:port", addr)
	}
	if !useTLS {
		return hostport, nil, nil
	}
	cfg, err := f.config()
	if err != nil {
		return "", nil, err
	}
	return hostport, cfg, nil
}

// grpcCredentials is the dial option of a grpcTarget result.
func grpcCredentials(cfg *tls.Config) grpc.DialOption {
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}
