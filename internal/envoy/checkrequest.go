// Package envoy builds ext_authz v3 CheckRequests the way Envoy's ext_authz
// HTTP filter fills them in (gRPC service, with_request_body on), so that the
// m1 CLI, tests and the development proxy speak to m1-authz exactly as Envoy
// does. See /work/shared/ENVOY.md for the points M1 depends on.
package envoy

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults of [Request] fields left empty.
const (
	DefaultScheme   = "http"
	DefaultProtocol = "HTTP/1.1"
)

// Header names Envoy itself fills in or interprets.
const (
	// HeaderPartialBody is the header the ext_authz filter adds whenever it
	// buffered a body: "true" when it cut the body to max_request_bytes.
	HeaderPartialBody = "x-envoy-auth-partial-body"
	// HeaderRequestID is the request id header Envoy's connection manager
	// generates when the client sent none.
	HeaderRequestID = "x-request-id"
	// HeaderForwardedProto is set by Envoy's connection manager to the
	// scheme when the client sent none.
	HeaderForwardedProto = "x-forwarded-proto"
)

// Request describes one HTTP request as it arrives at Envoy, plus the
// connection facts Envoy reports about it.
type Request struct {
	// Method is the HTTP method, as sent (methods are case-sensitive).
	// Required.
	Method string
	// Path is the request target with the query, e.g. "/mcp?session=abc".
	// Required.
	Path string
	// Host is the :authority. When empty, the first "Host" header of
	// Headers is used; one of them is required.
	Host string
	// Scheme is "http" (the default) or "https".
	Scheme string
	// Protocol is Envoy's protocol string: "HTTP/1.0", "HTTP/1.1" (the
	// default), "HTTP/2" or "HTTP/3".
	Protocol string
	// Headers are the request headers in the order sent; a name may
	// repeat. Names are lower-cased and repeated names joined with ","
	// as Envoy does. A "Host" header becomes the :authority; pseudo-headers
	// (":path", …) are refused: they come from the fields above.
	Headers [][2]string
	// Body is the request body Envoy buffered. An empty body means the
	// request had none (Envoy then sends no body and size -1).
	Body []byte
	// PackAsBytes sends the body in raw_body, as the filter does with
	// pack_as_bytes: true; otherwise it goes in body, with each byte that
	// is not valid UTF-8 replaced by '!' as Envoy does.
	PackAsBytes bool
	// SourcePrincipal is the principal of the downstream peer's mTLS
	// certificate (URI SAN, e.g. a SPIFFE id, else the subject).
	SourcePrincipal string
	// SourceAddr and DestAddr are the downstream peer's and Envoy's
	// listener addresses as "host:port"; empty leaves the address out.
	SourceAddr, DestAddr string
	// ContextExtensions are the per-route check_settings extensions.
	ContextExtensions map[string]string
	// Now is request.time; the zero value means time.Now().
	Now time.Time
	// RequestID is the x-request-id Envoy adds when the request carries
	// none; when it is empty too, a random UUID (version 4) is generated.
	// An x-request-id header in Headers wins over it.
	RequestID string
}

// BuildCheckRequest returns the CheckRequest Envoy's ext_authz filter would
// send for r, configured with with_request_body (allow_partial_message
// false, a body under max_request_bytes) and without encode_raw_headers:
//
//   - attributes.request.http.headers holds every header lower-cased, with
//     repeated names joined by ",", plus the pseudo-headers :authority,
//     :method, :path and :scheme; a client-sent x-envoy-auth-partial-body
//     is dropped, and set to "false" when a body is present; x-request-id
//     and x-forwarded-proto are added when absent, as Envoy's connection
//     manager does; content-length is set to the body length when a body
//     is present and the header is not;
//   - path keeps the query; query and fragment stay empty;
//   - id is a random stream id; size is the body length, or -1 without a
//     body;
//   - header values and a string body are coerced to UTF-8 as Envoy does.
//
// It fails on a missing method, path or host, on a header name that is not
// an HTTP token, on a header value or path with a control character, and
// on an address that is not host:port. It never modifies r.
func BuildCheckRequest(r Request) (*authv3.CheckRequest, error) {
	if r.Method == "" || !httpguts.ValidHeaderFieldName(r.Method) {
		return nil, fmt.Errorf("build CheckRequest: method %q is not an HTTP token", r.Method)
	}
	if r.Path == "" || hasCTLOrSpace(r.Path) || !utf8.ValidString(r.Path) {
		return nil, fmt.Errorf("build CheckRequest: path %q is empty or has a space, a control character or invalid UTF-8", r.Path)
	}
	scheme := cmp.Or(r.Scheme, DefaultScheme)
	host := r.Host

	headers := make(map[string]string, len(r.Headers)+8)
	for _, kv := range r.Headers {
		name := strings.ToLower(kv[0])
		value := strings.Trim(kv[1], " \t") // optional white space is not part of the value
		switch {
		case strings.HasPrefix(name, ":"):
			return nil, fmt.Errorf("build CheckRequest: header %q: pseudo-headers come from Method, Path, Host and Scheme", kv[0])
		case !httpguts.ValidHeaderFieldName(name):
			return nil, fmt.Errorf("build CheckRequest: header name %q is not an HTTP token", kv[0])
		case strings.ContainsAny(value, "\r\n\x00"):
			return nil, fmt.Errorf("build CheckRequest: header %q: value has CR, LF or NUL", kv[0])
		}
		switch name {
		case "host":
			// HTTP/1 Host becomes the :authority; Envoy sends no "host".
			if host == "" {
				host = value
			} else if value != host {
				return nil, fmt.Errorf("build CheckRequest: Host header %q differs from Host %q", value, host)
			}
			continue
		case HeaderPartialBody:
			continue // Envoy drops the client's, so it cannot fake one
		}
		value = sanitizeUTF8(value)
		if old, ok := headers[name]; ok {
			value = old + "," + value
		}
		headers[name] = value
	}
	if host == "" {
		return nil, errors.New("build CheckRequest: no host: set Host or send a Host header")
	}
	if strings.ContainsAny(host, "\r\n\x00") {
		return nil, fmt.Errorf("build CheckRequest: host %q has CR, LF or NUL", host)
	}
	host = sanitizeUTF8(host)

	headers[":authority"] = host
	headers[":method"] = r.Method
	headers[":path"] = r.Path
	headers[":scheme"] = scheme
	if _, ok := headers[HeaderForwardedProto]; !ok {
		headers[HeaderForwardedProto] = scheme
	}
	if _, ok := headers[HeaderRequestID]; !ok {
		headers[HeaderRequestID] = cmp.Or(r.RequestID, newUUID())
	}

	h := &authv3.AttributeContext_HttpRequest{
		Id:       streamID(),
		Method:   r.Method,
		Headers:  headers,
		Path:     r.Path,
		Host:     host,
		Scheme:   scheme,
		Size:     -1,
		Protocol: cmp.Or(r.Protocol, DefaultProtocol),
	}
	if len(r.Body) > 0 {
		h.Size = int64(len(r.Body))
		if _, ok := headers["content-length"]; !ok {
			headers["content-length"] = strconv.Itoa(len(r.Body))
		}
		headers[HeaderPartialBody] = "false"
		if r.PackAsBytes {
			h.RawBody = bytes.Clone(r.Body)
		} else {
			h.Body = sanitizeUTF8(string(r.Body))
		}
	}

	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	attrs := &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Time: timestamppb.New(now), Http: h},
	}
	if r.SourceAddr != "" || r.SourcePrincipal != "" {
		attrs.Source = &authv3.AttributeContext_Peer{Principal: r.SourcePrincipal}
		if r.SourceAddr != "" {
			a, err := socketAddress(r.SourceAddr)
			if err != nil {
				return nil, fmt.Errorf("build CheckRequest: source address: %w", err)
			}
			attrs.Source.Address = a
		}
	}
	if r.DestAddr != "" {
		a, err := socketAddress(r.DestAddr)
		if err != nil {
			return nil, fmt.Errorf("build CheckRequest: destination address: %w", err)
		}
		attrs.Destination = &authv3.AttributeContext_Peer{Address: a}
	}
	if len(r.ContextExtensions) > 0 {
		attrs.ContextExtensions = maps.Clone(r.ContextExtensions)
	}
	return &authv3.CheckRequest{Attributes: attrs}, nil
}

// socketAddress parses "host:port" ("[::1]:80" for IPv6) into an Envoy
// socket address.
func socketAddress(s string) (*corev3.Address, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("address %q: bad port", s)
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}, nil
}

// sanitizeUTF8 replaces each byte that is not part of valid UTF-8 with '!',
// as Envoy's MessageUtil::sanitizeUtf8String does (lengths are preserved).
func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteByte('!')
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func hasCTLOrSpace(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// streamID is a random 64-bit stream id in decimal, as Envoy reports it.
func streamID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return strconv.FormatUint(binary.BigEndian.Uint64(b[:]), 10)
}

// newUUID returns a random (version 4) UUID, the form of the x-request-id
// Envoy generates.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], u[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], u[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], u[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], u[8:10])
	out[23] = '-'
	hex.Encode(out[24:], u[10:])
	return string(out[:])
}
