package envoy

import (
	"cmp"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
)

// FromHTTP describes a request received by a Go HTTP server (a development
// proxy standing in for Envoy) as a [Request], with body the request body
// the caller read. It takes the method, the request target as sent, the
// Host, the headers (names sorted, since Go does not keep their order;
// values of one name in order), scheme "https" when the connection is TLS,
// the protocol in Envoy's spelling, the peer and local addresses, and as
// source principal the first URI SAN of the client certificate, else its
// subject, as Envoy reports an mTLS peer.
//
// Now and RequestID stay zero (BuildCheckRequest fills them), and so do
// PackAsBytes and ContextExtensions, which are the caller's filter
// configuration: set them on the result.
func FromHTTP(r *http.Request, body []byte) Request {
	req := Request{
		Method:     r.Method,
		Path:       requestTarget(r),
		Host:       cmp.Or(r.Host, r.URL.Host),
		Scheme:     "http",
		Protocol:   protocol(r),
		Body:       body,
		SourceAddr: r.RemoteAddr,
	}
	if r.TLS != nil || strings.EqualFold(r.URL.Scheme, "https") {
		req.Scheme = "https"
	}
	for _, name := range slices.Sorted(maps.Keys(r.Header)) {
		if strings.EqualFold(name, "host") {
			continue // r.Host is the authority
		}
		for _, v := range r.Header[name] {
			req.Headers = append(req.Headers, [2]string{name, v})
		}
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && a != nil {
		req.DestAddr = a.String()
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert := r.TLS.PeerCertificates[0]
		if len(cert.URIs) > 0 {
			req.SourcePrincipal = cert.URIs[0].String()
		} else {
			req.SourcePrincipal = cert.Subject.String()
		}
	}
	return req
}

// requestTarget is the path with the query as the client sent it.
func requestTarget(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI() // a client request, or an absolute-form target
}

// protocol spells r's protocol as Envoy does.
func protocol(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "HTTP/1.0"
	case r.ProtoMajor == 2:
		return "HTTP/2"
	case r.ProtoMajor == 3:
		return "HTTP/3"
	}
	return DefaultProtocol
}
