package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/util"
)

const header = "package m1.authz\n\nimport rego.v1\n\n" // four lines

// prepareSource prepares a one-module bundle holding header+body.
func prepareSource(t testing.TB, body string, opts Options) *Engine {
	t.Helper()
	e, err := Prepare(context.Background(), &Bundle{Modules: map[string]string{"p.rego": header + body}}, opts)
	if err != nil {
		t.Fatalf("Prepare(%q): %v", body, err)
	}
	return e
}

// input parses JSON into an input value.
func input(t testing.TB, s string) ast.Value {
	t.Helper()
	var x any
	if err := util.UnmarshalJSON([]byte(s), &x); err != nil {
		t.Fatalf("input %s: %v", s, err)
	}
	v, err := ast.InterfaceToValue(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPrepareErrors(t *testing.T) {
	tests := []struct {
		name   string
		bundle *Bundle
		opts   Options
		want   []string // substrings of the error
	}{
		{
			name:   "parse error",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": header + "default decision := false\n\ndecision if {\n\tinput.m1.kind = = 1\n}\n"}},
			want:   []string{"parse policy: ", "authz.rego:8: rego_parse_error: "},
		},
		{
			name:   "rego v0 syntax",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": "package m1.authz\n\ndefault decision = false\n\ndecision { true }\n"}},
			want:   []string{"authz.rego:5: rego_parse_error: "},
		},
		{
			name: "compile error",
			bundle: &Bundle{Modules: map[string]string{
				"authz.rego": minimalPolicy,
				"lib.rego":   "package lib\n\nimport rego.v1\n\nf(x) := y\n",
			}},
			want: []string{"compile policy: 1 error occurred: lib.rego:5: rego_unsafe_var_error: var y is unsafe"},
		},
		{
			name:   "type error",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": header + "decision if {\n\tupper(1) == \"A\"\n}\n"}},
			want:   []string{"compile policy: ", "authz.rego:6: rego_type_error: upper: invalid argument(s)"},
		},
		{
			name:   "module without package",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy, "empty.rego": "# nothing\n"}},
			want:   []string{"parse policy: empty.rego:0: rego_parse_error: empty module"},
		},
		{
			name:   "no modules",
			bundle: &Bundle{},
			want:   []string{"bundle has no modules"},
		},
		{
			name:   "nil bundle",
			bundle: nil,
			want:   []string{"nil bundle"},
		},
		{
			name:   "decision path undefined",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": "package other\n\ndefault decision := false\n"}},
			want:   []string{"no rule or data defines the decision path data.m1.authz.decision"},
		},
		{
			name:   "custom path undefined",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}},
			opts:   Options{Path: "envoy/authz/allow"},
			want:   []string{"decision path data.envoy.authz.allow"},
		},
		{
			name:   "bad path",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}},
			opts:   Options{Path: "m1//decision"},
			want:   []string{`bad decision path "m1//decision": empty segment`},
		},
		{
			name:   "negative timeout",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}},
			opts:   Options{Timeout: -time.Second},
			want:   []string{"negative timeout"},
		},
		{
			name:   "tools not an object",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}, Data: map[string]any{"m1": map[string]any{"tools": []any{"read_file"}}}},
			want:   []string{"data.m1.tools: got array, want object"},
		},
		{
			name:   "tool entry not an object",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}, Data: map[string]any{"m1": map[string]any{"tools": map[string]any{"read_file": true}}}},
			want:   []string{`data.m1.tools["read_file"]: got boolean, want object`},
		},
		{
			name: "requires_approval not a boolean",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}, Data: map[string]any{"m1": map[string]any{"tools": map[string]any{
				"write_file": map[string]any{"requires_approval": "yes"},
			}}}},
			want: []string{`data.m1.tools["write_file"].requires_approval: got string, want boolean`},
		},
		{
			name: "risk not a string",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}, Data: map[string]any{"m1": map[string]any{"tools": map[string]any{
				"write_file": map[string]any{"risk": 3},
			}}}},
			want: []string{`data.m1.tools["write_file"].risk: got number, want string`},
		},
		{
			name:   "data not JSON-shaped",
			bundle: &Bundle{Modules: map[string]string{"authz.rego": minimalPolicy}, Data: map[string]any{"f": func() {}}},
			want:   []string{"prepare policy: "},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Prepare(context.Background(), tt.bundle, tt.opts)
			if err == nil {
				t.Fatalf("Prepare(%s) = nil error, want %q", tt.name, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Prepare(%s) error = %q, want it to contain %q", tt.name, err, w)
				}
			}
		})
	}
}

// TestPrepareErrorNamesDir checks that a bundle loaded from a directory
// names its files with the directory in errors.
func TestPrepareErrorNamesDir(t *testing.T) {
	dir := writeDir(t, map[string]string{"authz.rego": header + "decision if {\n\tinput.m1.kind = = 1\n}\n"})
	b, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Prepare(context.Background(), b, Options{})
	want := dir + "/authz.rego:6: rego_parse_error"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Prepare(broken dir bundle) error = %v, want it to contain %q", err, want)
	}
}

func TestDecisionPath(t *testing.T) {
	const src = "package envoy.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.m1.kind == \"mcp\"\n"
	tests := []struct{ name, path string }{
		{"slash", "envoy/authz/allow"},
		{"leading slash", "/envoy/authz/allow"},
		{"dotted", "envoy.authz.allow"},
		{"dotted with data", "data.envoy.authz.allow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Prepare(context.Background(), &Bundle{Modules: map[string]string{"p.rego": src}}, Options{Path: tt.path})
			if err != nil {
				t.Fatalf("Prepare(path %q): %v", tt.path, err)
			}
			d, err := e.Eval(context.Background(), input(t, `{"m1": {"kind": "mcp"}}`))
			if err != nil || !d.Allowed {
				t.Errorf("Eval(path %q) = %+v, %v, want allowed", tt.path, d, err)
			}
		})
	}
}

func TestDecisionPathFromData(t *testing.T) {
	b := &Bundle{
		Modules: map[string]string{"p.rego": "package lib\n"},
		Data:    map[string]any{"m1": map[string]any{"authz": map[string]any{"decision": true}}},
	}
	e, err := Prepare(context.Background(), b, Options{})
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if d, err := e.Eval(context.Background(), nil); err != nil || !d.Allowed {
		t.Errorf("Eval(data decision) = %+v, %v, want allowed", d, err)
	}
}

func TestEval(t *testing.T) {
	tests := []struct {
		name    string
		body    string // after the package header
		input   string // JSON; "" means no input
		want    Decision
		wantErr error
		errText string
	}{
		{
			name:  "bool allow",
			body:  "default decision := false\n\ndecision if input.m1.kind == \"tool_call\"\n",
			input: `{"m1": {"kind": "tool_call"}}`,
			want:  Decision{Allowed: true},
		},
		{
			name:  "bool deny",
			body:  "default decision := false\n\ndecision if input.m1.kind == \"tool_call\"\n",
			input: `{"m1": {"kind": "http"}}`,
			want:  Decision{},
		},
		{
			name:  "bool deny without input",
			body:  "default decision := false\n\ndecision if input.m1.kind == \"tool_call\"\n",
			want:  Decision{},
			input: "",
		},
		{
			name:  "object minimal",
			body:  `decision := {"allowed": true}`,
			input: `{}`,
			want:  Decision{Allowed: true},
		},
		{
			name: "object full",
			body: `decision := {
	"allowed": false,
	"reason": "token_missing",
	"http_status": 401,
	"headers": {"x-b": ["2", "3"], "x-a": "1"},
	"response_headers_to_add": [{"x-z": "z"}, {"x-y": ["y1", "y2"]}],
	"request_headers_to_remove": ["x-m1-approval-token", "cookie"],
	"body": "{\"error\": \"nope\"}",
	"dynamic_metadata": {"tool": input.m1.tool, "n": 2, "nested": {"ok": true}},
	"ignored_key": 1,
}`,
			input: `{"m1": {"tool": "write_file"}}`,
			want: Decision{
				Reason:                 "token_missing",
				HTTPStatus:             401,
				Headers:                []Header{{"x-a", "1"}, {"x-b", "2"}, {"x-b", "3"}},
				ResponseHeadersToAdd:   []Header{{"x-z", "z"}, {"x-y", "y1"}, {"x-y", "y2"}},
				RequestHeadersToRemove: []string{"x-m1-approval-token", "cookie"},
				Body:                   `{"error": "nope"}`,
				HasBody:                true,
				DynamicMetadata:        map[string]any{"tool": "write_file", "n": jsonNumber("2"), "nested": map[string]any{"ok": true}},
			},
		},
		{
			name:  "object empty body",
			body:  `decision := {"allowed": false, "body": ""}`,
			input: `{}`,
			want:  Decision{HasBody: true},
		},
		{
			name:  "object reason not a string",
			body:  `decision := {"allowed": false, "reason": {"code": "x", "list": [1, "<a>"]}}`,
			input: `{}`,
			want:  Decision{Reason: `{"code":"x","list":[1,"<a>"]}`},
		},
		{
			name:  "object http_status written as float",
			body:  `decision := {"allowed": false, "http_status": 403.0}`,
			input: `{}`,
			want:  Decision{HTTPStatus: 403},
		},
		{
			name:    "undefined",
			body:    "decision if input.m1.kind == \"tool_call\"\n",
			input:   `{"m1": {"kind": "http"}}`,
			wantErr: ErrUndefined,
		},
		{
			name:    "string result",
			body:    `decision := "allow"`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: "result is string, want boolean or object",
		},
		{
			name:    "number result",
			body:    `decision := 1`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "set result",
			body:    `decision contains "x"`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "object without allowed",
			body:    `decision := {"allow": true}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: `object has no "allowed"`,
		},
		{
			name:    "allowed not a boolean",
			body:    `decision := {"allowed": "true"}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: "allowed is string, want boolean",
		},
		{
			name:    "http_status out of range",
			body:    `decision := {"allowed": false, "http_status": 42}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: "http_status 42 is not an HTTP status code",
		},
		{
			name:    "http_status 600",
			body:    `decision := {"allowed": false, "http_status": 600}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "http_status fractional",
			body:    `decision := {"allowed": false, "http_status": 403.5}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "http_status a string",
			body:    `decision := {"allowed": false, "http_status": "403"}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: "http_status is string, want number",
		},
		{
			name:    "header value a number",
			body:    `decision := {"allowed": true, "headers": {"x-a": 1}}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
			errText: `headers["x-a"] is number`,
		},
		{
			name:    "header array with a number",
			body:    `decision := {"allowed": true, "response_headers_to_add": {"x-a": ["1", 2]}}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "headers a string",
			body:    `decision := {"allowed": true, "headers": "x-a: 1"}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "request_headers_to_remove a string",
			body:    `decision := {"allowed": true, "request_headers_to_remove": "cookie"}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "request_headers_to_remove with a number",
			body:    `decision := {"allowed": true, "request_headers_to_remove": ["cookie", 1]}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "body not a string",
			body:    `decision := {"allowed": false, "body": {"error": "x"}}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "dynamic_metadata not an object",
			body:    `decision := {"allowed": true, "dynamic_metadata": [1]}`,
			input:   `{}`,
			wantErr: ErrBadDecision,
		},
		{
			name:    "conflict",
			body:    "decision := true if input.m1.a\n\ndecision := false if input.m1.b\n",
			input:   `{"m1": {"a": true, "b": true}}`,
			errText: "eval_conflict_error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := prepareSource(t, tt.body, Options{})
			var in ast.Value
			if tt.input != "" {
				in = input(t, tt.input)
			}
			got, err := e.Eval(context.Background(), in)
			if tt.wantErr == nil && tt.errText == "" {
				if err != nil {
					t.Fatalf("Eval(%s) error: %v", tt.name, err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("Eval(%s) = %+v, want %+v", tt.name, got, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Eval(%s) = %+v, want error", tt.name, got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Eval(%s) error = %v, want %v", tt.name, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("Eval(%s) error = %q, want it to contain %q", tt.name, err, tt.errText)
			}
			if !reflect.DeepEqual(got, Decision{}) {
				t.Errorf("Eval(%s) = %+v with an error, want the zero Decision", tt.name, got)
			}
		})
	}
}

const slowPolicy = `default decision := false

decision if {
	count([x | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); x := i * j]) > input.m1.n
}
`

func TestEvalTimeout(t *testing.T) {
	e := prepareSource(t, slowPolicy, Options{Timeout: 20 * time.Millisecond})
	_, err := e.Eval(context.Background(), input(t, `{"m1": {"n": 0}}`))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Eval(slow policy, 20ms timeout) error = %v, want context.DeadlineExceeded", err)
	}
}

func TestEvalCanceled(t *testing.T) {
	e := prepareSource(t, slowPolicy, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	_, err := e.Eval(ctx, input(t, `{"m1": {"n": 0}}`))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Eval(slow policy, cancelled) error = %v, want context.Canceled", err)
	}
}

func TestTools(t *testing.T) {
	b := &Bundle{
		Modules: map[string]string{"p.rego": minimalPolicy},
		Data: map[string]any{"m1": map[string]any{"tools": map[string]any{
			"read_file":   map[string]any{"risk": "read", "requires_approval": false, "max_bytes": jsonNumber("4096")},
			"run_command": map[string]any{"risk": "execute", "requires_approval": true, "sensitive": true},
			"new_tool":    map[string]any{},
		}}},
	}
	e, err := Prepare(context.Background(), b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Tool{
		"read_file":   {Risk: "read", Raw: map[string]any{"risk": "read", "requires_approval": false, "max_bytes": jsonNumber("4096")}},
		"run_command": {Risk: "execute", RequiresApproval: true, Sensitive: true, Raw: map[string]any{"risk": "execute", "requires_approval": true, "sensitive": true}},
		"new_tool":    {RequiresApproval: true, Raw: map[string]any{}},
	}
	if got := e.Tools(); !reflect.DeepEqual(got, want) {
		t.Errorf("Tools() = %+v, want %+v", got, want)
	}

	// The engine owns a copy: changing the bundle or the returned map does
	// not change it.
	b.Data["m1"].(map[string]any)["tools"].(map[string]any)["read_file"].(map[string]any)["risk"] = "write"
	delete(e.Tools(), "read_file")
	e.Tools()["read_file"].Raw["risk"] = "execute"
	if got := e.Tools()["read_file"]; got.Risk != "read" || got.Raw["risk"] != "read" {
		t.Errorf("Tools()[read_file] after mutation = %+v, want risk read", got)
	}

	none := prepareSource(t, "default decision := false\n", Options{})
	if got := none.Tools(); got == nil || len(got) != 0 {
		t.Errorf("Tools() without data.m1.tools = %#v, want an empty map", got)
	}
}

func TestRevision(t *testing.T) {
	ctx := context.Background()
	b := &Bundle{Revision: "v7", Modules: map[string]string{"p.rego": minimalPolicy}}
	e, err := Prepare(ctx, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Revision(); got != "v7" {
		t.Errorf("Revision() = %q, want v7", got)
	}

	// Without a revision, one is derived from the content.
	revs := map[string]bool{}
	for _, b := range []*Bundle{
		{Modules: map[string]string{"p.rego": minimalPolicy}},
		{Modules: map[string]string{"p.rego": minimalPolicy + "# x\n"}},
		{Modules: map[string]string{"p.rego": minimalPolicy}, Data: map[string]any{"a": 1}},
		{Modules: map[string]string{"p.rego": minimalPolicy}, Tests: map[string]string{"p_test.rego": "package t\n"}},
	} {
		e, err := Prepare(ctx, b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !hashRevision.MatchString(e.Revision()) {
			t.Errorf("Revision() = %q, want sha256:<hex>", e.Revision())
		}
		revs[e.Revision()] = true
	}
	if len(revs) != 4 {
		t.Errorf("derived revisions = %v, want 4 distinct", revs)
	}
}

// TestEvalConcurrent shares one engine between goroutines (run with -race).
func TestEvalConcurrent(t *testing.T) {
	e := prepareSource(t, `default decision := {"allowed": false, "headers": {"x-b": ["2", "3"], "x-a": "1"}, "dynamic_metadata": {"k": ["v"]}}

decision := {"allowed": true, "headers": {"x-b": ["2", "3"], "x-a": "1"}, "dynamic_metadata": {"k": ["v"]}} if input.m1.n % 2 == 0
`, Options{Timeout: time.Second})
	wantHeaders := []Header{{"x-a", "1"}, {"x-b", "2"}, {"x-b", "3"}}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				n := g*50 + i
				d, err := e.Eval(context.Background(), input(t, fmt.Sprintf(`{"m1": {"n": %d}}`, n)))
				if err != nil || d.Allowed != (n%2 == 0) || !reflect.DeepEqual(d.Headers, wantHeaders) ||
					!reflect.DeepEqual(d.DynamicMetadata, map[string]any{"k": []any{"v"}}) {
					errs <- fmt.Errorf("Eval(n=%d) = %+v, %v", n, d, err)
					return
				}
				d.DynamicMetadata["k"].([]any)[0] = "mutated" // must not leak into other results
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func jsonNumber(s string) json.Number { return json.Number(s) }
