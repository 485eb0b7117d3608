package toolcall

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/gowebpki/jcs"
	"golang.org/x/text/cases"
)

// FuzzParseCall feeds arbitrary paths and bodies to the parser. It must
// never panic; whatever it accepts as a tool call must hash like an
// independent RFC 8785 implementation hashes the same arguments; and no
// body it accepts has an object with two member names that a
// case-insensitive reader would confuse.
// Seeds: f.Add below and testdata/fuzz/FuzzParseCall.
func FuzzParseCall(f *testing.F) {
	f.Add("POST", "/mcp", []byte(mcpCall("read_file", `{"path":"/etc/hosts"}`)))
	f.Add("POST", "/mcp", []byte(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
	f.Add("POST", "/tools/write_file", []byte(`{"path":"/tmp/x","n":[1,2.5e3,-0,true,null]}`))
	f.Add("POST", "/tools/%2e%2e/x", []byte(`{}`))
	f.Add("POST", "/mcp", []byte(`{"a":{"a":{"a":1,"a":2}}}`))
	f.Add("POST", "/tools/x", []byte(`{"n":9007199254740993}`))
	f.Add("GET", "/mcp", []byte(nil))
	f.Add("POST", "/tools/read_file", []byte(`{"path":"public.txt","PATH":"secret.txt"}`))
	f.Add("POST", "/mcp", []byte(mcpCall("x", `{"a":[{"s":1,"\u017f":2}]}`)))
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		r := &authv3.AttributeContext_HttpRequest{Method: method, Path: path, RawBody: body}
		c, err := Parse(r, HeadersOf(r), testOpts)
		c2, err2 := Parse(r, HeadersOf(r), testOpts)
		if (err == nil) != (err2 == nil) || c.ArgsSHA256 != c2.ArgsSHA256 || c.Kind != c2.Kind {
			t.Fatalf("Parse is not deterministic: %v/%v, %+v/%+v", err, err2, c, c2)
		}
		if err != nil {
			if err.Status() != 400 && err.Status() != 413 {
				t.Fatalf("Error status %d, want 400 or 413", err.Status())
			}
			return
		}
		if c.IsMCP || c.Kind == KindToolCall {
			if a, b, dup := foldedDuplicate(body); dup {
				t.Fatalf("accepted %q with member names %q and %q, equal under case folding", body, a, b)
			}
		}
		if c.ID != nil && !json.Valid(c.ID) {
			t.Fatalf("ID %q of %q is not one JSON value", c.ID, body)
		}
		if c.Kind != KindToolCall {
			return
		}
		if !ValidName(c.Tool) {
			t.Fatalf("accepted tool name %q", c.Tool)
		}
		want, jerr := jcs.Transform(c.Args)
		if jerr != nil {
			t.Fatalf("accepted arguments %q that RFC 8785 rejects: %v", c.Args, jerr)
		}
		if c.ArgsSHA256 != sha(string(want)) {
			t.Fatalf("args_sha256 of %q = %s, want sha256(%s)", c.Args, c.ArgsSHA256, want)
		}
		if _, herr := hex.DecodeString(c.ArgsSHA256); herr != nil || len(c.ArgsSHA256) != 64 {
			t.Fatalf("args_sha256 %q is not 64 hex digits", c.ArgsSHA256)
		}
	})
}

// foldedDuplicate walks body with encoding/json (independently of the
// parser) and returns the first two member names of one object that are
// equal under Unicode case folding (simple or full).
func foldedDuplicate(body []byte) (a, b string, dup bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var walk func() bool
	walk = func() bool {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch tok {
		case json.Delim('{'):
			var names []string
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return false
				}
				name, _ := k.(string)
				for _, n := range names {
					if strings.EqualFold(n, name) || cases.Fold().String(n) == cases.Fold().String(name) {
						a, b, dup = n, name, true
						return false
					}
				}
				names = append(names, name)
				if !walk() {
					return false
				}
			}
			_, err = dec.Token()
			return err == nil
		case json.Delim('['):
			for dec.More() {
				if !walk() {
					return false
				}
			}
			_, err = dec.Token()
			return err == nil
		}
		return true
	}
	walk()
	return a, b, dup
}
