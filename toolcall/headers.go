package toolcall

import (
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Headers are the request headers Envoy sent, lower-cased.
type Headers struct {
	m map[string]string
}

// HeadersOf returns the request headers from either the headers map or, when
// Envoy is configured with encode_raw_headers, the header_map; repeated keys
// are joined with "," as Envoy joins them.
func HeadersOf(h *authv3.AttributeContext_HttpRequest) Headers {
	if m := h.GetHeaders(); len(m) > 0 || h.GetHeaderMap() == nil {
		return Headers{m: m}
	}
	m := make(map[string]string, len(h.GetHeaderMap().GetHeaders()))
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		k := strings.ToLower(hv.GetKey())
		v := hv.GetValue()
		if raw := hv.GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		if old, ok := m[k]; ok {
			v = old + "," + v
		}
		m[k] = v
	}
	return Headers{m: m}
}

// Get returns the value of the lower-case header name, or "".
func (h Headers) Get(name string) string { return h.m[name] }

// Lookup returns the value of the lower-case header name and whether it was sent.
func (h Headers) Lookup(name string) (string, bool) {
	v, ok := h.m[name]
	return v, ok
}

// Map returns the underlying map; callers must not modify it.
func (h Headers) Map() map[string]string { return h.m }
