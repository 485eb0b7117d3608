package rediscache

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"testing/fstest"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/m1-agent/m1/internal/cache/cachetest"
	"github.com/m1-agent/m1/internal/policy"
)

func equal(a, b *policy.Decision) bool { return reflect.DeepEqual(a, b) }

func TestCodecRoundTrip(t *testing.T) {
	for name, d := range cachetest.Decisions() {
		b, err := encode(d)
		if err != nil {
			t.Fatalf("%s: encode: %v", name, err)
		}
		if b[0] != version1 {
			t.Errorf("%s: version byte %d, want %d", name, b[0], version1)
		}
		got, err := decode(b)
		if err != nil {
			t.Fatalf("%s: decode(%q): %v", name, b, err)
		}
		if !equal(got, d) {
			t.Errorf("%s: decode(encode(d)) = %#v\nwant %#v", name, got, d)
		}
	}
}

func TestCodecCompact(t *testing.T) {
	tests := []struct {
		d    *policy.Decision
		want string
	}{
		{&policy.Decision{}, "\x01{}"},
		{&policy.Decision{Allowed: true}, "\x01{\"a\":true}"},
		{&policy.Decision{Reason: "<no>", HTTPStatus: 429, Headers: []policy.Header{{Key: "retry-after", Value: "5"}}},
			"\x01{\"r\":\"<no>\",\"s\":429,\"h\":[[\"retry-after\",\"5\"]]}"},
		{&policy.Decision{Headers: []policy.Header{}}, "\x01{\"h\":[]}"},
	}
	for _, tt := range tests {
		b, err := encode(tt.d)
		if err != nil || string(b) != tt.want {
			t.Errorf("encode(%+v) = %q, %v; want %q", tt.d, b, err, tt.want)
		}
	}
}

func TestCodecInexact(t *testing.T) {
	tests := map[string]*policy.Decision{
		"reason utf8":        {Reason: "\xff"},
		"body utf8":          {Body: "a\xc3"},
		"header utf8":        {Headers: []policy.Header{{Key: "x", Value: "\xff"}}},
		"response hdr utf8":  {ResponseHeadersToAdd: []policy.Header{{Key: "\xff", Value: "x"}}},
		"remove utf8":        {RequestHeadersToRemove: []string{"\xff"}},
		"metadata key utf8":  {DynamicMetadata: map[string]any{"\xff": "x"}},
		"metadata int":       {DynamicMetadata: map[string]any{"n": 1}},
		"metadata float":     {DynamicMetadata: map[string]any{"n": 1.5}},
		"metadata []string":  {DynamicMetadata: map[string]any{"l": []string{"a"}}},
		"metadata nil list":  {DynamicMetadata: map[string]any{"l": []any(nil)}},
		"metadata nil map":   {DynamicMetadata: map[string]any{"m": map[string]any(nil)}},
		"metadata empty num": {DynamicMetadata: map[string]any{"n": json.Number("")}},
		"metadata bad num":   {DynamicMetadata: map[string]any{"n": json.Number("1x")}},
		"metadata nested":    {DynamicMetadata: map[string]any{"m": map[string]any{"l": []any{"\xff"}}}},
	}
	for name, d := range tests {
		if b, err := encode(d); err == nil {
			t.Errorf("%s: encode = %q, want an error", name, b)
		} else if !errors.Is(err, errInexact) && name != "metadata bad num" {
			t.Errorf("%s: encode error = %v, want errInexact", name, err)
		}
	}
}

// FuzzDecode: decode never panics, and what it accepts re-encodes to a
// value that decodes to the same decision.
func FuzzDecode(f *testing.F) {
	for _, d := range cachetest.Decisions() {
		b, err := encode(d)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("\x01{\"m\":{\"a\":[1,2,{\"b\":null}]}}"))
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decode(b)
		if err != nil {
			return
		}
		again, err := encode(d)
		if err != nil {
			return // e.g. a \ud800 escape decoded to U+FFFD is fine; invalid input strings are not re-encodable
		}
		d2, err := decode(again)
		if err != nil {
			t.Fatalf("decode(encode(decode(%q))): %v", b, err)
		}
		if !equal(d, d2) {
			t.Fatalf("re-encoding changed the decision: %#v vs %#v", d, d2)
		}
	})
}

// TestCodecRealPolicy round-trips a decision as the policy engine makes it
// (metadata from ast.JSON), not only hand-built ones.
func TestCodecRealPolicy(t *testing.T) {
	const rego = `package m1.authz

decision := {
	"allowed": false,
	"reason": {"code": "over_budget", "limit": 2.50},
	"http_status": 429,
	"headers": {"retry-after": "30", "x-multi": ["a", "b"]},
	"response_headers_to_add": [{"x-m1": "1"}],
	"request_headers_to_remove": ["cookie"],
	"body": "<html>too many</html>",
	"dynamic_metadata": {
		"n": 1, "f": 1.5, "e": 1e300, "big": 12345678901234567890, "neg": -7,
		"s": "ü", "t": true, "z": null, "l": [1, "x", [], {}], "o": {"k": {"k2": [null]}},
	},
}
`
	bundle, err := policy.LoadFS(fstest.MapFS{"authz.rego": &fstest.MapFile{Data: []byte(rego)}})
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.Prepare(context.Background(), bundle, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := e.Eval(context.Background(), ast.MustParseTerm(`{"m1": {}}`).Value)
	if err != nil {
		t.Fatal(err)
	}
	b, err := encode(&d)
	if err != nil {
		t.Fatalf("encode(policy decision): %v", err)
	}
	got, err := decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !equal(got, &d) {
		t.Errorf("policy decision did not round-trip:\n got %#v\nwant %#v", got, &d)
	}
	if d.DynamicMetadata == nil || len(d.Headers) != 3 {
		t.Fatalf("the policy decision is not the rich one intended: %#v", d)
	}
}
