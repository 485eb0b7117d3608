package devproxy

import (
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http/httpguts"
)

// appendAction is the action Envoy takes for o: the deprecated append
// flag, when set, wins (true: append to an existing entry, false:
// overwrite); otherwise append_action, whose unset value is
// APPEND_IF_EXISTS_OR_ADD; an unknown action overwrites. fromAppend tells
// whether the deprecated flag decided.
func appendAction(o *corev3.HeaderValueOption) (action corev3.HeaderValueOption_HeaderAppendAction, fromAppend bool) {
	if a := o.GetAppend(); a != nil {
		if a.GetValue() {
			return corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, true
		}
		return corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, true
	}
	switch act := o.GetAppendAction(); act {
	case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_ADD_IF_ABSENT,
		corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
		return act, false
	}
	return corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, false
}

// mutateHeaders applies the header options to h in order, as Envoy's
// ext_authz filter applies ok_response.headers to the upstream request,
// response_headers_to_add to the response and denied_response.headers to
// its local reply:
//
//   - APPEND_IF_EXISTS_OR_ADD adds another entry (with the deprecated
//     append: true, the value is appended to the existing entry after a
//     comma, as Envoy's appendCopy does);
//   - ADD_IF_ABSENT sets the header only when it is absent;
//   - OVERWRITE_IF_EXISTS_OR_ADD replaces every entry;
//   - OVERWRITE_IF_EXISTS replaces the entries only when present.
//
// The value is header.value, or header.raw_value when value is empty.
// Options that would make the message malformed (a pseudo-header, Host, a
// name that is not a token, a value with CR, LF or NUL) are skipped and
// their names returned.
func mutateHeaders(h http.Header, opts []*corev3.HeaderValueOption) (skipped []string) {
	for _, o := range opts {
		key := o.GetHeader().GetKey()
		val := o.GetHeader().GetValue()
		if raw := o.GetHeader().GetRawValue(); val == "" && len(raw) > 0 {
			val = string(raw)
		}
		if !mutable(key) || strings.ContainsAny(val, "\r\n\x00") {
			skipped = append(skipped, key)
			continue
		}
		name := http.CanonicalHeaderKey(key)
		old, exists := h[name]
		exists = exists && len(old) > 0
		switch action, fromAppend := appendAction(o); action {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			if fromAppend && exists {
				old[0] += "," + val
			} else {
				h.Add(name, val)
			}
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			if !exists {
				h.Set(name, val)
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if exists {
				h.Set(name, val)
			}
		default: // OVERWRITE_IF_EXISTS_OR_ADD
			h.Set(name, val)
		}
	}
	return skipped
}

// mutable reports whether a header name may be set or removed: a token,
// neither a pseudo-header nor Host (Envoy refuses to remove those; M1's
// dev proxy takes the authority from the client alone).
func mutable(name string) bool {
	return httpguts.ValidHeaderFieldName(name) && !strings.EqualFold(name, "host")
}

// applyOK applies an OkHttpResponse to the upstream request in Envoy's
// order: header mutations, then headers_to_remove, then
// query_parameters_to_set and query_parameters_to_remove. It returns the
// names it skipped.
func applyOK(out *http.Request, ok *authv3.OkHttpResponse) (skipped []string) {
	skipped = mutateHeaders(out.Header, ok.GetHeaders())
	for _, name := range ok.GetHeadersToRemove() {
		if !mutable(name) {
			skipped = append(skipped, name)
			continue
		}
		out.Header.Del(name)
	}
	if len(ok.GetQueryParametersToSet()) > 0 || len(ok.GetQueryParametersToRemove()) > 0 {
		q := out.URL.Query()
		for _, p := range ok.GetQueryParametersToSet() {
			q.Set(p.GetKey(), p.GetValue())
		}
		for _, k := range ok.GetQueryParametersToRemove() {
			q.Del(k)
		}
		out.URL.RawQuery = q.Encode() // sorted by key; Envoy re-encodes too
	}
	return skipped
}
