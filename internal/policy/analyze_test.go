package policy

import (
	"context"
	"reflect"
	"strings"
	"testing"
)

func TestCacheable(t *testing.T) {
	m1 := Needs{M1: true}
	all := Needs{All: true}
	tests := []struct {
		name      string
		body      string // after the four-line header of package m1.authz
		extra     map[string]string
		cacheable bool
		reason    string // substring of the reason, with "(p.rego:<line>)"
		needs     Needs
	}{
		// Cacheable: only input.m1, only deterministic built-ins.
		{
			name:      "input.m1 only",
			body:      "default decision := false\n\ndecision if input.m1.kind == \"tool_call\"\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "no input at all",
			body:      "decision := true\n",
			cacheable: true,
		},
		{
			name:      "input.m1 through a local",
			body:      "decision if {\n\tm := input.m1\n\tm.kind == \"mcp\"\n\tx := m\n\tx.tool\n}\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "input.m1 through an import alias",
			body:      "import input.m1 as req\n\ndecision if req.kind == \"mcp\"\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "input m1 in brackets",
			body:      "decision if input[\"m1\"][\"kind\"] == \"mcp\"\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "whole input.m1 passed to functions",
			body:      "decision if f(input.m1)\n\nf(x) if {\n\tjson.marshal(x) != \"\"\n\tcount(object.keys(x)) > 0\n\tstartswith(x.tool, \"read_\")\n}\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "comprehensions and every over input.m1",
			body:      "decision if {\n\tcount([k | some k, _ in input.m1.args]) < 10\n\tevery v in input.m1.args { is_string(v) }\n\tnot input.m1.token\n}\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "dynamic key below input.m1",
			body:      "decision if {\n\tsome k\n\tinput.m1.args[k] == \"x\"\n\tinput.m1[input.m1.field]\n}\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "data and deterministic built-ins",
			body:      "decision if {\n\tdata.m1.tools[input.m1.tool].risk == \"read\"\n\tcrypto.sha256(input.m1.tool) != \"\"\n\tregex.match(`^[a-z_]+$`, input.m1.tool)\n}\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "unused import of input",
			body:      "import input.attributes.request.http as req\n\ndecision if input.m1.kind == \"mcp\"\n",
			cacheable: true, needs: m1,
		},
		{
			name:      "print is compiled out",
			body:      "decision if {\n\tprint(input.attributes)\n\tinput.m1.kind == \"mcp\"\n}\n",
			cacheable: true, needs: m1,
		},

		// Reads outside input.m1.
		{
			name:   "input.attributes",
			body:   "decision if {\n\tinput.m1.kind == \"http\"\n\tinput.attributes.request.http.method == \"GET\"\n}\n",
			reason: "policy reads input.attributes (p.rego:7)",
			needs:  Needs{Attributes: true, M1: true},
		},
		{
			name:   "input.attributes through an import alias",
			body:   "import input.attributes.request.http as req\n\ndecision if req.method == \"GET\"\n",
			reason: "policy reads input.attributes (p.rego:7)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.parsed_path only",
			body:   "decision if input.parsed_path == [\"mcp\"]\n",
			reason: "policy reads input.parsed_path (p.rego:5)",
			needs:  Needs{ParsedPath: true},
		},
		{
			name:   "every opa-envoy-plugin key",
			body:   "decision if {\n\tinput.parsed_query.a\n\tinput.parsed_body.b\n\tinput.truncated_body == false\n\tinput.version.ext_authz == \"v3\"\n}\n",
			reason: "policy reads input.parsed_query (p.rego:6)",
			needs:  Needs{ParsedQuery: true, ParsedBody: true, TruncatedBody: true, Version: true},
		},
		{
			name:   "unknown top-level key",
			body:   "decision if input.foo == 1\n",
			reason: "policy reads input.foo (p.rego:5)",
		},
		{
			name:   "input.attributes in an else branch",
			body:   "decision := false if {\n\tinput.m1.kind == \"x\"\n} else := true if {\n\tinput.attributes.source\n}\n",
			reason: "policy reads input.attributes (p.rego:8)",
			needs:  Needs{Attributes: true, M1: true},
		},
		{
			name:   "input.attributes in a function body",
			body:   "decision if f(1)\n\nf(x) if {\n\tinput.attributes.n == x\n}\n",
			reason: "policy reads input.attributes (p.rego:8)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in a comprehension",
			body:   "decision if {\n\tcount({h | some h, _ in input.attributes.request.http.headers}) > 0\n}\n",
			reason: "policy reads input.attributes (p.rego:6)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes under not",
			body:   "decision if {\n\tnot input.attributes.x\n}\n",
			reason: "policy reads input.attributes (p.rego:6)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in a rule head",
			body:   "decision := {\"allowed\": true, \"m\": input.attributes.request.http.method}\n",
			reason: "policy reads input.attributes (p.rego:5)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input in a rule head ref",
			body:   "decision := true\n\nby_method[input.attributes.method] := true\n",
			reason: "policy reads input.attributes (p.rego:7)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in a key below input.m1",
			body:   "decision if input.m1.args[input.attributes.k]\n",
			reason: "policy reads input.attributes (p.rego:5)",
			needs:  Needs{Attributes: true, M1: true},
		},
		{
			name:   "input.attributes in a template string",
			body:   "decision if $\"{input.attributes.method}\" == \"GET\"\n",
			reason: "policy reads input.attributes (p.rego:5)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in a function argument default",
			body:   "decision if count(object.get(input.m1, \"args\", input.attributes)) > 0\n",
			reason: "policy reads input.attributes (p.rego:5)",
			needs:  Needs{Attributes: true, M1: true},
		},
		{
			name:   "input.attributes in a with value",
			body:   "decision if {\n\tallow with data.x as input.attributes\n}\n\nallow if data.x\n",
			reason: "policy reads input.attributes (p.rego:6)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in a set comprehension key of an object comprehension",
			body:   "decision if {\n\tcount({k: v | some k, v in {\"a\": 1}; v == input.attributes[k]}) > 0\n}\n",
			reason: "policy reads input.attributes (p.rego:6)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in an unused rule",
			body:   "decision := true\n\nunused if input.attributes\n",
			reason: "policy reads input.attributes (p.rego:7)",
			needs:  Needs{Attributes: true},
		},
		{
			name:   "input.attributes in another module",
			body:   "decision if data.lib.ok\n",
			extra:  map[string]string{"q.rego": "package lib\n\nimport rego.v1\n\nok if input.attributes\n"},
			reason: "policy reads input.attributes (q.rego:5)",
			needs:  Needs{Attributes: true},
		},

		// Unnarrowable uses of input.
		{
			name:   "bare input assigned to a local",
			body:   "decision if {\n\tx := input\n\tx.attributes\n}\n",
			reason: "policy uses the whole input (p.rego:6)",
			needs:  all,
		},
		{
			name:   "input with a variable key",
			body:   "decision if {\n\tsome k\n\tinput[k] == 1\n}\n",
			reason: "policy reads input[k], a key that is not a constant string (p.rego:7)",
			needs:  all,
		},
		{
			name:   "input with a key from input.m1",
			body:   "decision if input[input.m1.key]\n",
			reason: "policy reads input with a non-constant key (p.rego:5)",
			needs:  Needs{All: true, M1: true},
		},
		{
			name:   "input with a number key",
			body:   "decision if input[0]\n",
			reason: "policy reads input[0]",
			needs:  all,
		},
		{
			name:   "walk(input)",
			body:   "decision if {\n\twalk(input, [p, v])\n\tv == \"x\"\n}\n",
			reason: "policy uses the whole input (p.rego:6)",
			needs:  all,
		},
		{
			name:   "input passed to a function",
			body:   "decision if f(input)\n\nf(x) if x.m1.kind == \"mcp\"\n",
			reason: "policy uses the whole input (p.rego:5)",
			needs:  all,
		},
		{
			name:   "input in a composite",
			body:   "decision if {\n\tx := {\"in\": input}\n\tx[\"in\"].m1\n}\n",
			reason: "policy uses the whole input (p.rego:6)",
			needs:  all,
		},
		{
			name:   "input compared",
			body:   "decision if input == {\"m1\": {}}\n",
			reason: "policy uses the whole input (p.rego:5)",
			needs:  all,
		},
		{
			name:   "some in input",
			body:   "decision if {\n\tsome v in input\n\tv == 1\n}\n",
			reason: "policy reads input with a non-constant key (p.rego:6)",
			needs:  all,
		},
		{
			name:   "input with a wildcard key",
			body:   "decision if input[_] == 1\n",
			reason: "policy reads input with a non-constant key (p.rego:5)",
			needs:  all,
		},
		{
			name:   "every over input",
			body:   "decision if {\n\tevery v in input { v != null }\n}\n",
			reason: "policy uses the whole input (p.rego:6)",
			needs:  all,
		},
		{
			name:   "object.get on input",
			body:   "decision if object.get(input, \"m1\", {}).kind == \"mcp\"\n",
			reason: "policy uses the whole input (p.rego:5)",
			needs:  all,
		},
		{
			name:   "with input as",
			body:   "decision if {\n\tallow with input as {\"m1\": {\"kind\": \"mcp\"}}\n}\n\nallow if input.m1.kind == \"mcp\"\n",
			reason: "policy replaces input with `with input as ...` (p.rego:6)",
			needs:  Needs{All: true, M1: true},
		},
		{
			name:   "with input.m1.kind as",
			body:   "decision if {\n\tallow with input.m1.kind as \"mcp\"\n}\n\nallow if input.m1.kind == \"mcp\"\n",
			reason: "policy replaces input with `with input.m1.kind as ...` (p.rego:6)",
			needs:  Needs{All: true, M1: true},
		},

		// Non-deterministic built-ins.
		{
			name:   "time.now_ns",
			body:   "decision if {\n\tinput.m1.kind == \"mcp\"\n\ttime.now_ns() > 0\n}\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:7)",
			needs:  m1,
		},
		{
			name:   "time.now_ns in a rule head",
			body:   "decision := {\"allowed\": true, \"at\": time.now_ns()}\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:5)",
		},
		{
			name:   "time.now_ns in a function body",
			body:   "decision if f(1)\n\nf(x) if {\n\ttime.now_ns() > x\n}\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:8)",
		},
		{
			name:   "time.now_ns in a comprehension",
			body:   "decision if {\n\tcount([t | some _ in [1, 2]; t := time.now_ns()]) == 2\n}\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:6)",
		},
		{
			name:   "time.now_ns as a function argument",
			body:   "decision if f(time.now_ns())\n\nf(x) if x > 0\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:5)",
		},
		{
			name:   "deterministic time built-in",
			body:   "decision if time.parse_rfc3339_ns(input.m1.at) > 0\n",
			reason: "policy calls non-deterministic built-in time.parse_rfc3339_ns (p.rego:5)",
			needs:  m1,
		},
		{
			name:   "http.send",
			body:   "decision if {\n\tresp := http.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1/\"})\n\tresp.status_code == 200\n}\n",
			reason: "policy calls non-deterministic built-in http.send (p.rego:6)",
		},
		{
			name:   "rand.intn",
			body:   "decision if rand.intn(\"x\", 10) == 0\n",
			reason: "policy calls non-deterministic built-in rand.intn (p.rego:5)",
		},
		{
			name:   "uuid.rfc4122",
			body:   "decision if uuid.rfc4122(\"x\") != \"\"\n",
			reason: "non-deterministic built-in uuid.rfc4122",
		},
		{
			name:   "net.cidr_contains",
			body:   "decision if net.cidr_contains(\"10.0.0.0/8\", \"10.1.2.3\")\n",
			reason: "non-deterministic built-in net.cidr_contains",
		},
		{
			name:   "opa.runtime",
			body:   "decision if opa.runtime().env.M1 == \"x\"\n",
			reason: "non-deterministic built-in opa.runtime",
		},
		{
			name:   "io.jwt.decode_verify (flagged by OPA)",
			body:   "decision if {\n\t[ok, _, _] := io.jwt.decode_verify(input.m1.jwt, {\"secret\": \"s\"})\n\tok\n}\n",
			reason: "non-deterministic built-in io.jwt.decode_verify (p.rego:6)",
			needs:  m1,
		},
		{
			name:   "certificate verification",
			body:   "decision if {\n\t[ok, _] := crypto.x509.parse_and_verify_certificates(input.m1.pem)\n\tok\n}\n",
			reason: "non-deterministic built-in crypto.x509.parse_and_verify_certificates (p.rego:6)",
			needs:  m1,
		},
		{
			name:   "first offence is reported",
			body:   "decision if {\n\ttime.now_ns() > 0\n\tinput.attributes.x\n}\n",
			reason: "policy calls non-deterministic built-in time.now_ns (p.rego:6)",
			needs:  Needs{Attributes: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			modules := map[string]string{"p.rego": header + tt.body}
			for k, v := range tt.extra {
				modules[k] = v
			}
			e, err := Prepare(context.Background(), &Bundle{Modules: modules}, Options{})
			if err != nil {
				t.Fatalf("Prepare(%s): %v", tt.name, err)
			}
			ok, reason := e.Cacheable()
			if ok != tt.cacheable {
				t.Errorf("Cacheable(%s) = %v (%q), want %v", tt.name, ok, reason, tt.cacheable)
			}
			if tt.cacheable && reason != "" {
				t.Errorf("Cacheable(%s) reason = %q, want empty", tt.name, reason)
			}
			if !strings.Contains(reason, tt.reason) {
				t.Errorf("Cacheable(%s) reason = %q, want it to contain %q", tt.name, reason, tt.reason)
			}
			got := e.Needs()
			got.M1Paths = nil // TestM1Paths covers them
			if !reflect.DeepEqual(got, tt.needs) {
				t.Errorf("Needs(%s) = %+v, want %+v", tt.name, got, tt.needs)
			}
		})
	}
}

// TestCacheableReasonNamesDir checks that reasons carry the bundle
// directory, like compile errors.
func TestCacheableReasonNamesDir(t *testing.T) {
	dir := writeDir(t, map[string]string{"authz.rego": header + "decision if input.attributes.x\n"})
	b, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Prepare(context.Background(), b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := "policy reads input.attributes (" + dir + "/authz.rego:5)"
	if ok, reason := e.Cacheable(); ok || reason != want {
		t.Errorf("Cacheable() = %v, %q, want false, %q", ok, reason, want)
	}
}

func TestM1Paths(t *testing.T) {
	tests := []struct {
		name string
		body string
		want [][]string // nil: all of input.m1
	}{
		{"no input", "decision := true\n", [][]string{}},
		{"fields", "decision if {\n\tinput.m1.kind == \"tool_call\"\n\tinput.m1.token.m1.kind == \"approval\"\n}\n",
			[][]string{{"kind"}, {"token", "m1", "kind"}}},
		{"prefix subsumes", "decision if {\n\tinput.m1.token.sub == \"a\"\n\tis_object(input.m1.token)\n}\n", [][]string{{"token"}}},
		{"variable key cuts the path", "decision if {\n\tsome k\n\tinput.m1.token[k] == \"a\"\n}\n", [][]string{{"token"}}},
		{"through a local", "decision if {\n\tt := input.m1.token\n\tt.m1.kind == \"grant\"\n}\n", [][]string{{"token"}}},
		{"whole m1", "decision if {\n\tm := input.m1\n\tm.kind == \"mcp\"\n}\n", nil},
		{"object.get on m1", "decision if object.get(input.m1, \"kind\", \"\") == \"mcp\"\n", nil},
		{"whole input", "decision if input.m1.kind == input.version\n", [][]string{{"kind"}}},
		{"bare input", "decision if walk(input, _)\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Bundle{Modules: map[string]string{"p.rego": "package m1.authz\n\nimport rego.v1\n\n" + tt.body}}
			e, err := Prepare(context.Background(), b, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := e.Needs().M1Paths; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("M1Paths(%s) = %q, want %q", tt.name, got, tt.want)
			}
		})
	}
}
