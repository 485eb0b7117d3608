package certs

import (
	"context"
	"crypto/tls"
	"encoding/pem"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// nextCertificate returns the DER bytes of the first CERTIFICATE block of
// b (other blocks skipped) and what follows it; nil when there is none.
func nextCertificate(b []byte) (der, rest []byte) {
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return nil, nil
		}
		if blk.Type == "CERTIFICATE" {
			return blk.Bytes, b
		}
	}
}

// ClientConfig returns the TLS configuration of an M1 client: the server
// verified against the CAs of caFile (the system roots when it is empty),
// and, when certFile is set, a client certificate for mutual TLS (keyFile
// then required). It fails when a file does not load.
func ClientConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, _, err := LoadCAs(caFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := LoadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{*cert}
	}
	return c, nil
}

// PeerSPIFFEID returns the SPIFFE ID of the gRPC peer of ctx: the URI SAN
// of the client certificate the server verified (mutual TLS), or "" when
// the connection is not TLS, no client certificate was verified, or it
// names no single SPIFFE ID. An unverified certificate is never read.
func PeerSPIFFEID(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return ""
	}
	return SPIFFEID(info.State.VerifiedChains[0][0])
}
