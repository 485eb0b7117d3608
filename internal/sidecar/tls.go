package sidecar

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/certs"
)

// setupTLS loads the certificate, key and client CA (DESIGN §8); without
// M1_TLS_CERT_FILE both listeners stay plaintext.
func (s *Server) setupTLS() error {
	o := s.opts
	if o.TLS.CertFile == "" {
		return nil
	}
	r, err := certs.NewReloader(o.TLS.CertFile, o.TLS.KeyFile, o.TLS.ClientCAFile, s.log.Named("tls"))
	if err != nil {
		return fmt.Errorf("load M1_TLS_CERT_FILE, M1_TLS_KEY_FILE, M1_TLS_CLIENT_CA_FILE: %w", err)
	}
	s.tls = r
	return nil
}

func (s *Server) grpcServerOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(s.opts.GRPCMaxRecvBytes),
		grpc.NumStreamWorkers(streamWorkers()),
	}
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls.MutualConfig("h2"))))
	}
	return opts
}

// serveAdmin serves the admin port, over TLS when it is configured.
func (s *Server) serveAdmin() error {
	if s.tls != nil {
		return s.admin.ServeTLS(s.adminLis, "", "") // the certificate comes from TLSConfig
	}
	return s.admin.Serve(s.adminLis)
}

func (s *Server) adminScheme() string {
	if s.tls != nil {
		return "https"
	}
	return "http"
}

// tlsCheck is /health's view of the certificate: degraded when a reload
// failed or it expires within certs.ExpiryWarning.
func (s *Server) tlsCheck() admin.Check {
	if s.tls == nil {
		return admin.Check{Status: admin.StatusDisabled, Detail: "plaintext: M1_TLS_CERT_FILE not set"}
	}
	st := s.tls.Status()
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"cert_file": st.CertFile, "subject": st.Subject, "names": st.Names, "not_after": st.NotAfter,
		"loaded_at": st.LoadedAt, "mutual_tls": s.tls.MutualTLS(),
	}}
	if p := st.Problem(s.opts.Now()); p != "" {
		c.Status, c.Detail = admin.StatusDegraded, p
	}
	return c
}
