package policy

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Decision is a policy decision: from a boolean result only Allowed is set;
// from an object result (the opa-envoy-plugin object form) every field is
// read. Unknown object keys are ignored.
type Decision struct {
	// Allowed is the boolean result, or the object's "allowed" (required,
	// boolean).
	Allowed bool
	// Reason is the object's "reason": a string as is, any other value as
	// its JSON text; "" when absent.
	Reason string
	// HTTPStatus is the object's "http_status", an integer in 100..599;
	// 0 when absent.
	HTTPStatus int
	// Headers is the object's "headers": an object of header name to a
	// string or an array of strings (one Header per string), or an array of
	// such objects. Within an object, names are sorted.
	Headers []Header
	// ResponseHeadersToAdd is "response_headers_to_add", same form as Headers.
	ResponseHeadersToAdd []Header
	// RequestHeadersToRemove is "request_headers_to_remove", an array of
	// strings.
	RequestHeadersToRemove []string
	// Body is the object's "body" (a string) and HasBody tells whether it
	// was present; when present it replaces the JSON deny body.
	Body    string
	HasBody bool
	// DynamicMetadata is "dynamic_metadata", an object, JSON-shaped
	// (numbers as json.Number); nil when absent.
	DynamicMetadata map[string]any
}

// Header is one HTTP header.
type Header struct{ Key, Value string }

var (
	keyAllowed                = ast.InternedTerm("allowed")
	keyReason                 = ast.InternedTerm("reason")
	keyHTTPStatus             = ast.InternedTerm("http_status")
	keyHeaders                = ast.InternedTerm("headers")
	keyResponseHeadersToAdd   = ast.InternedTerm("response_headers_to_add")
	keyRequestHeadersToRemove = ast.InternedTerm("request_headers_to_remove")
	keyBody                   = ast.InternedTerm("body")
	keyDynamicMetadata        = ast.InternedTerm("dynamic_metadata")
)

// parseDecision reads a decision result. Errors wrap ErrBadDecision.
func parseDecision(v ast.Value) (Decision, error) {
	switch v := v.(type) {
	case ast.Boolean:
		return Decision{Allowed: bool(v)}, nil
	case ast.Object:
		return parseDecisionObject(v)
	}
	return Decision{}, fmt.Errorf("%w: result is %s, want boolean or object", ErrBadDecision, ast.ValueName(v))
}

func parseDecisionObject(obj ast.Object) (Decision, error) {
	var d Decision
	allowed := obj.Get(keyAllowed)
	if allowed == nil {
		return d, fmt.Errorf("%w: object has no \"allowed\"", ErrBadDecision)
	}
	b, ok := allowed.Value.(ast.Boolean)
	if !ok {
		return d, badField("allowed", allowed.Value, "boolean")
	}
	d.Allowed = bool(b)

	if t := obj.Get(keyReason); t != nil {
		if s, ok := t.Value.(ast.String); ok {
			d.Reason = string(s)
		} else {
			j, err := jsonText(t.Value)
			if err != nil {
				return Decision{}, fmt.Errorf("%w: reason: %w", ErrBadDecision, err)
			}
			d.Reason = j
		}
	}
	if t := obj.Get(keyHTTPStatus); t != nil {
		n, ok := t.Value.(ast.Number)
		if !ok {
			return Decision{}, badField("http_status", t.Value, "number")
		}
		code, ok := n.Int()
		if !ok {
			// Accept an integral value written with a fraction ("403.0").
			f, fok := n.Float64()
			code, ok = int(f), fok && f == float64(int(f)) && f >= 0 && f < 1000
		}
		if !ok || code < 100 || code > 599 {
			return Decision{}, fmt.Errorf("%w: http_status %v is not an HTTP status code", ErrBadDecision, n)
		}
		d.HTTPStatus = code
	}
	var err error
	if t := obj.Get(keyHeaders); t != nil {
		if d.Headers, err = parseHeaders("headers", t.Value); err != nil {
			return Decision{}, err
		}
	}
	if t := obj.Get(keyResponseHeadersToAdd); t != nil {
		if d.ResponseHeadersToAdd, err = parseHeaders("response_headers_to_add", t.Value); err != nil {
			return Decision{}, err
		}
	}
	if t := obj.Get(keyRequestHeadersToRemove); t != nil {
		arr, ok := t.Value.(*ast.Array)
		if !ok {
			return Decision{}, badField("request_headers_to_remove", t.Value, "array of strings")
		}
		d.RequestHeadersToRemove = make([]string, 0, arr.Len())
		for i := range arr.Len() {
			s, ok := arr.Elem(i).Value.(ast.String)
			if !ok {
				return Decision{}, badField(fmt.Sprintf("request_headers_to_remove[%d]", i), arr.Elem(i).Value, "string")
			}
			d.RequestHeadersToRemove = append(d.RequestHeadersToRemove, string(s))
		}
	}
	if t := obj.Get(keyBody); t != nil {
		s, ok := t.Value.(ast.String)
		if !ok {
			return Decision{}, badField("body", t.Value, "string")
		}
		d.Body, d.HasBody = string(s), true
	}
	if t := obj.Get(keyDynamicMetadata); t != nil {
		if _, ok := t.Value.(ast.Object); !ok {
			return Decision{}, badField("dynamic_metadata", t.Value, "object")
		}
		m, err := ast.JSON(t.Value)
		if err != nil {
			return Decision{}, fmt.Errorf("%w: dynamic_metadata: %w", ErrBadDecision, err)
		}
		d.DynamicMetadata = m.(map[string]any)
	}
	return d, nil
}

// parseHeaders reads the opa-envoy-plugin header forms: an object of name to
// string or array of strings, or an array of such objects.
func parseHeaders(field string, v ast.Value) ([]Header, error) {
	var hs []Header
	switch v := v.(type) {
	case ast.Object:
		return appendHeaders(hs, field, v)
	case *ast.Array:
		var err error
		for i := range v.Len() {
			obj, ok := v.Elem(i).Value.(ast.Object)
			if !ok {
				return nil, badField(fmt.Sprintf("%s[%d]", field, i), v.Elem(i).Value, "object")
			}
			if hs, err = appendHeaders(hs, fmt.Sprintf("%s[%d]", field, i), obj); err != nil {
				return nil, err
			}
		}
		return hs, nil
	}
	return nil, badField(field, v, "object or array of objects")
}

func appendHeaders(hs []Header, field string, obj ast.Object) ([]Header, error) {
	for _, k := range obj.Keys() { // a sorted copy; obj may be shared by other evaluations
		name, ok := k.Value.(ast.String)
		if !ok {
			return nil, fmt.Errorf("%w: %s: header name %v is not a string", ErrBadDecision, field, k)
		}
		switch v := obj.Get(k).Value.(type) {
		case ast.String:
			hs = append(hs, Header{Key: string(name), Value: string(v)})
		case *ast.Array:
			for i := range v.Len() {
				s, ok := v.Elem(i).Value.(ast.String)
				if !ok {
					return nil, badField(fmt.Sprintf("%s[%q][%d]", field, string(name), i), v.Elem(i).Value, "string")
				}
				hs = append(hs, Header{Key: string(name), Value: string(s)})
			}
		default:
			return nil, badField(fmt.Sprintf("%s[%q]", field, string(name)), v, "string or array of strings")
		}
	}
	return hs, nil
}

func badField(field string, got ast.Value, want string) error {
	return fmt.Errorf("%w: %s is %s, want %s", ErrBadDecision, field, ast.ValueName(got), want)
}

// jsonText renders a value as compact JSON.
func jsonText(v ast.Value) (string, error) {
	x, err := ast.JSON(v)
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(x); err != nil {
		return "", err
	}
	return strings.TrimSuffix(sb.String(), "\n"), nil
}
