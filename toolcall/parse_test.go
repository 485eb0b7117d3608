package toolcall

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/gowebpki/jcs"
	"golang.org/x/text/cases"

	"github.com/m1-agent/m1/internal/deny"
)

var testOpts = Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20}

func httpReq(method, path, body string, headers ...string) *authv3.AttributeContext_HttpRequest {
	h := map[string]string{}
	for i := 0; i+1 < len(headers); i += 2 {
		h[headers[i]] = headers[i+1]
	}
	return &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "tools.local", Headers: h, Body: body}
}

func mcpCall(name, args string) string {
	return `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + name + `","arguments":` + args + `}}`
}

func parse(r *authv3.AttributeContext_HttpRequest) (Call, *Error) {
	return Parse(r, HeadersOf(r), testOpts)
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestParseCallKinds(t *testing.T) {
	tests := []struct {
		name                       string
		req                        *authv3.AttributeContext_HttpRequest
		kind, tool, method, hashOf string
	}{
		{"mcp tools/call", httpReq("POST", "/mcp?session=abc", mcpCall("read_file", `{"path":"/etc/hosts"}`)), KindToolCall, "read_file", "tools/call", `{"path":"/etc/hosts"}`},
		{"mcp tools/call no arguments", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_dir"}}`), KindToolCall, "list_dir", "tools/call", `{}`},
		{"mcp params before method", httpReq("POST", "/mcp", `{"params":{"arguments":{"b":1,"a":2},"name":"x"},"method":"tools/call","id":1,"jsonrpc":"2.0"}`), KindToolCall, "x", "tools/call", `{"a":2,"b":1}`},
		{"mcp escaped method", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools\/c\u0061ll","params":{"name":"r\u0065ad","arguments":{}}}`), KindToolCall, "read", "tools/call", `{}`},
		{"mcp initialize", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}`), KindMCP, "", "initialize", ""},
		{"mcp notification", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","method":"notifications/initialized"}`), KindMCP, "", "notifications/initialized", ""},
		{"mcp response", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":3,"result":{}}`), KindMCP, "", "", ""},
		{"mcp stream", httpReq("GET", "/mcp", ""), KindMCP, "", "", ""},
		{"mcp session end", httpReq("DELETE", "/mcp", ""), KindMCP, "", "", ""},
		{"mcp PUT is http", httpReq("PUT", "/mcp", "{"), KindHTTP, "", "", ""},
		{"rest", httpReq("POST", "/tools/write_file", `{"path":"/tmp/x","content":"hi"}`), KindToolCall, "write_file", "", `{"content":"hi","path":"/tmp/x"}`},
		{"rest empty body", httpReq("POST", "/tools/list_dir", ""), KindToolCall, "list_dir", "", `{}`},
		{"rest json with charset", httpReq("POST", "/tools/list_dir", `{"a":[1,2.5,true,null]}`, "content-type", "application/json; charset=UTF-8"), KindToolCall, "list_dir", "", `{"a":[1,2.5,true,null]}`},
		{"rest +json media type", httpReq("POST", "/tools/list_dir", `{}`, "content-type", "application/vnd.api+json"), KindToolCall, "list_dir", "", `{}`},
		{"mcp json media type", httpReq("POST", "/mcp", mcpCall("read_file", `{}`), "content-type", "application/json"), KindToolCall, "read_file", "tools/call", `{}`},
		{"mcp routing headers agree", httpReq("POST", "/mcp", mcpCall("read_file", `{}`), "mcp-method", "tools/call", "mcp-name", "read_file"), KindToolCall, "read_file", "tools/call", `{}`},
		{"mcp method header on ping", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, "mcp-method", "ping"), KindMCP, "", "ping", ""},
		{"mcp server/discover", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`, "mcp-method", "server/discover"), KindMCP, "", "server/discover", ""},
		{"names equal only after folding in different objects", httpReq("POST", "/tools/x", `{"path":1,"o":{"PATH":2},"a":[{"p":1},{"P":2}]}`), KindToolCall, "x", "", `{"a":[{"p":1},{"P":2}],"o":{"PATH":2},"path":1}`},
		{"many distinct names", httpReq("POST", "/tools/x", manyNames(40, "")), KindToolCall, "x", "", ""},
		{"rest GET is http", httpReq("GET", "/tools/list_dir", ""), KindHTTP, "", "", ""},
		{"other path", httpReq("GET", "/healthz", "not json"), KindHTTP, "", "", ""},
		{"encoded tool path", httpReq("POST", "/tools/read%5Ffile", `{}`), KindToolCall, "read_file", "", `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(tt.req)
			if err != nil {
				t.Fatalf("Parse(%s) error %v", tt.name, err)
			}
			if c.Kind != tt.kind || c.Tool != tt.tool || c.MCPMethod != tt.method {
				t.Fatalf("Parse(%s) = kind %q tool %q method %q, want %q %q %q", tt.name, c.Kind, c.Tool, c.MCPMethod, tt.kind, tt.tool, tt.method)
			}
			if tt.hashOf != "" && c.ArgsSHA256 != sha(tt.hashOf) {
				t.Fatalf("Parse(%s) args_sha256 = %s, want sha256(%s)", tt.name, c.ArgsSHA256, tt.hashOf)
			}
		})
	}
}

func TestParseCallRejects(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 64) + "1" + strings.Repeat("}", 64)
	// 64 levels inside the arguments object make 65
	over64 := strings.Repeat(`[`, 64) + strings.Repeat("]", 64)
	tests := []struct {
		name   string
		req    *authv3.AttributeContext_HttpRequest
		code   string
		status int
	}{
		{"partial body", httpReq("POST", "/mcp", mcpCall("x", "{}"), "x-envoy-auth-partial-body", "true"), deny.BodyTooLarge, 413},
		{"content-length larger", httpReq("POST", "/tools/x", `{}`, "content-length", "10"), deny.BodyTooLarge, 413},
		{"content-length smaller", httpReq("POST", "/tools/x", `{"a":1}`, "content-length", "2"), deny.BadRequest, 400},
		{"content-length not a number", httpReq("POST", "/tools/x", `{}`, "content-length", "2, 2"), deny.BadRequest, 400},
		{"content-length plus sign", httpReq("POST", "/tools/x", `{}`, "content-length", "+2"), deny.BadRequest, 400},
		{"body too large", httpReq("POST", "/tools/x", `{"a":"`+strings.Repeat("x", 1<<20)+`"}`), deny.BodyTooLarge, 413},
		{"not json", httpReq("POST", "/mcp", `hello`), deny.BadRequest, 400},
		{"truncated json", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"`), deny.BadRequest, 400},
		{"trailing data", httpReq("POST", "/tools/x", `{} {}`), deny.BadRequest, 400},
		{"invalid utf-8", &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/x", RawBody: []byte("{\"a\":\"\xff\"}")}, deny.BadRequest, 400},
		{"batch", httpReq("POST", "/mcp", `[`+mcpCall("x", "{}")+`]`), deny.BadRequest, 400},
		{"params null", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":null}`), deny.BadRequest, 400},
		{"params array", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}`), deny.BadRequest, 400},
		{"arguments null", httpReq("POST", "/mcp", mcpCall("x", "null")), deny.BadRequest, 400},
		{"arguments string", httpReq("POST", "/mcp", mcpCall("x", `"{}"`)), deny.BadRequest, 400},
		{"name missing", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}`), deny.BadRequest, 400},
		{"name not string", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}`), deny.BadRequest, 400},
		{"method not string", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":1}`), deny.BadRequest, 400},
		{"rest body array", httpReq("POST", "/tools/x", `[]`), deny.BadRequest, 400},
		{"rest body null", httpReq("POST", "/tools/x", `null`), deny.BadRequest, 400},
		{"duplicate top key", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}`), deny.BadRequest, 400},
		{"duplicate escaped key", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"ping","m\u0065thod":"tools/call"}`), deny.BadRequest, 400},
		{"duplicate deep key", httpReq("POST", "/tools/x", `{"a":{"b":[{"c":1,"c":2}]}}`), deny.BadRequest, 400},
		{"duplicate arguments", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{},"arguments":{"a":1}}}`), deny.BadRequest, 400},
		{"too deep", httpReq("POST", "/tools/x", `{"x":`+deep+`}`), deny.BadRequest, 400},
		{"too deep mcp", httpReq("POST", "/mcp", mcpCall("x", `{"a":`+over64+`}`)), deny.BadRequest, 400},
		{"big integer", httpReq("POST", "/tools/x", `{"n":9007199254740993}`), deny.NumberNotCanonical, 400},
		{"long fraction", httpReq("POST", "/mcp", mcpCall("x", `{"n":0.10000000000000000001}`)), deny.NumberNotCanonical, 400},
		{"overflow", httpReq("POST", "/tools/x", `{"n":1e400}`), deny.NumberNotCanonical, 400},
		{"number in ignored field", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":18446744073709551617,"method":"ping"}`), deny.NumberNotCanonical, 400},
		{"dotdot", httpReq("POST", "/tools/../mcp", `{}`), deny.BadPath, 400},
		{"dot", httpReq("POST", "/./mcp", `{}`), deny.BadPath, 400},
		{"double slash", httpReq("POST", "//mcp", `{}`), deny.BadPath, 400},
		{"trailing slash", httpReq("POST", "/tools/", `{}`), deny.BadPath, 400},
		{"encoded dotdot", httpReq("POST", "/tools/%2e%2e/mcp", `{}`), deny.BadPath, 400},
		{"encoded slash", httpReq("POST", "/tools/x%2f..%2fy", `{}`), deny.BadPath, 400},
		{"bad percent", httpReq("POST", "/tools/x%zz", `{}`), deny.BadPath, 400},
		{"dotdot on other path", httpReq("GET", "/a/../b", ``), deny.BadPath, 400},
		{"backslash", httpReq("GET", `/a\..\b`, ``), deny.BadPath, 400},
		{"no leading slash", httpReq("GET", "mcp", ``), deny.BadPath, 400},
		{"bad tool name", httpReq("POST", "/tools/a%20b", `{}`), deny.BadPath, 400},
		{"long tool name", httpReq("POST", "/tools/"+strings.Repeat("a", 129), `{}`), deny.BadPath, 400},
		{"bad mcp tool name", httpReq("POST", "/mcp", mcpCall("../x", `{}`)), deny.BadPath, 400},
		{"partial body, other spelling", httpReq("POST", "/tools/x", `{}`, "x-envoy-auth-partial-body", "True"), deny.BodyTooLarge, 413},
		{"partial body, repeated header", &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/x", Body: `{}`,
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-envoy-auth-partial-body", Value: "false"}, {Key: "x-envoy-auth-partial-body", Value: "true"}}}}, deny.BodyTooLarge, 413},
		// Keys a case-insensitive server would read as the envelope's.
		{"method in other case", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":8,"Method":"tools/call","params":{"name":"run_command","arguments":{}}}`), deny.BadRequest, 400},
		{"params in other case", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":8,"method":"ping","PARAMS":{}}`), deny.BadRequest, 400},
		{"arguments twice, cases differ", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/tmp/x"},"Arguments":{"path":"/etc/passwd"}}}`), deny.BadRequest, 400},
		{"name in other case", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}`), deny.BadRequest, 400},
		{"arguments with long s", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{},"argument\u017f":{"p":1}}}`), deny.BadRequest, 400},
		{"params with long s", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"ping","param\u017f":{}}`), deny.BadRequest, 400},
		// Names equal under Unicode case folding, at any depth: Go's
		// encoding/json in the tool would read the other one (simple
		// folding), Python's casefold or JavaScript's toUpperCase too (full).
		{"args names differ in case", httpReq("POST", "/mcp", mcpCall("read_file", `{"path":"public.txt","PATH":"secret.txt"}`)), deny.BadRequest, 400},
		{"rest names differ in case", httpReq("POST", "/tools/read_file", `{"path":"public.txt","PATH":"secret.txt"}`), deny.BadRequest, 400},
		{"deep names differ in case", httpReq("POST", "/tools/x", `{"a":[{"b":{"Key":1,"kEY":2}}]}`), deny.BadRequest, 400},
		{"names differ by long s", httpReq("POST", "/tools/x", `{"s":1,"ſ":2}`), deny.BadRequest, 400},
		{"names differ by kelvin sign", httpReq("POST", "/tools/x", `{"k":1,"K":2}`), deny.BadRequest, 400},
		{"names differ by escaped case", httpReq("POST", "/tools/x", `{"path":1,"PATH":2}`), deny.BadRequest, 400},
		{"rest body of white space", httpReq("POST", "/tools/list_dir", " \r\n\t"), deny.BadRequest, 400},
		{"rest body of a newline", httpReq("POST", "/tools/list_dir", "\n"), deny.BadRequest, 400},
		{"greek names differ in case", httpReq("POST", "/tools/x", `{"σ":1,"Σ":2}`), deny.BadRequest, 400},
		{"names differ by sharp s", httpReq("POST", "/tools/x", `{"ss":1,"ß":2}`), deny.BadRequest, 400},
		{"names differ by capital sharp s", httpReq("POST", "/tools/x", `{"a":{"SS":1,"ẞ":2}}`), deny.BadRequest, 400},
		{"names differ by a ligature", httpReq("POST", "/mcp", mcpCall("x", `{"file":1,"\ufb01le":2}`)), deny.BadRequest, 400},
		{"names differ in case in the envelope", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"ID":2,"method":"ping"}`), deny.BadRequest, 400},
		{"names differ in case in _meta", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"a":1,"A":2}}}`), deny.BadRequest, 400},
		{"many names, two differ in case", httpReq("POST", "/tools/x", manyNames(40, "N7")), deny.BadRequest, 400},
		// Media types a tool may parse as something other than JSON.
		{"form media type", httpReq("POST", "/tools/x", `{}`, "content-type", "application/x-www-form-urlencoded"), deny.UnsupportedMediaType, 415},
		{"multipart media type", httpReq("POST", "/mcp", mcpCall("x", `{}`), "content-type", "multipart/form-data; boundary=x"), deny.UnsupportedMediaType, 415},
		{"text media type", httpReq("POST", "/tools/x", `{}`, "content-type", "text/plain"), deny.UnsupportedMediaType, 415},
		{"empty media type", httpReq("POST", "/tools/x", `{}`, "content-type", ""), deny.UnsupportedMediaType, 415},
		{"json in utf-16", httpReq("POST", "/tools/x", `{}`, "content-type", "application/json; charset=utf-16"), deny.UnsupportedMediaType, 415},
		{"repeated media type", httpReq("POST", "/tools/x", `{}`, "content-type", "application/json,application/x-www-form-urlencoded"), deny.UnsupportedMediaType, 415},
		{"json suffix in another type", httpReq("POST", "/tools/x", `{}`, "content-type", "text/x+json"), deny.UnsupportedMediaType, 415},
		// A query the tool could read is not covered by the approval.
		{"query on a tool path", httpReq("POST", "/tools/write_file?path=/etc/passwd", `{"path":"/tmp/x"}`), deny.BadPath, 400},
		{"empty query on a tool path", httpReq("POST", "/tools/write_file?", `{}`), deny.BadPath, 400},
		{"fragment on a tool path", httpReq("POST", "/tools/write_file#x", `{}`), deny.BadPath, 400},
		// MCP routing headers that disagree with the body.
		{"mcp-method differs", httpReq("POST", "/mcp", mcpCall("write_file", `{}`), "mcp-method", "tools/list"), deny.HeaderMismatch, 400},
		{"mcp-method on a response", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":3,"result":{}}`, "mcp-method", "ping"), deny.HeaderMismatch, 400},
		{"mcp-method on the session stream", httpReq("GET", "/mcp", ``, "mcp-method", "tools/call"), deny.HeaderMismatch, 400},
		{"mcp-method on session end", httpReq("DELETE", "/mcp", ``, "mcp-method", "tools/call"), deny.HeaderMismatch, 400},
		{"empty mcp-method on the session stream", httpReq("GET", "/mcp", ``, "mcp-method", ""), deny.HeaderMismatch, 400},
		{"mcp-name on the session stream", httpReq("GET", "/mcp", ``, "mcp-name", "write_file"), deny.HeaderMismatch, 400},
		{"method value with NUL", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call\u0000","params":{"name":"write_file","arguments":{}}}`), deny.BadRequest, 400},
		// Names a reader that ends strings at NUL takes for others.
		{"method with NUL", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method\u0000":"tools/call","params":{"name":"write_file","arguments":{}}}`), deny.BadRequest, 400},
		{"name with NUL", httpReq("POST", "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name\u0000":"write_file","name":"read_file","arguments":{}}}`), deny.BadRequest, 400},
		{"argument name with NUL", httpReq("POST", "/tools/x", `{"a":{"path\u0000x":"/etc/passwd","path":"/tmp"}}`), deny.BadRequest, 400},
		{"mcp-name differs", httpReq("POST", "/mcp", mcpCall("write_file", `{}`), "mcp-method", "tools/call", "mcp-name", "read_file"), deny.HeaderMismatch, 400},
		{"mcp-name differs in case", httpReq("POST", "/mcp", mcpCall("write_file", `{}`), "mcp-name", "Write_File"), deny.HeaderMismatch, 400},
		{"mcp-name repeated", &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/mcp", Body: mcpCall("read_file", `{}`),
			HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "mcp-name", Value: "read_file"}, {Key: "Mcp-Name", Value: "read_file"}}}}, deny.HeaderMismatch, 400},
		{"huge negative exponent", httpReq("POST", "/tools/x", `{"n":1e-99999999999999999999}`), deny.NumberNotCanonical, 400},
		{"huge exponent", httpReq("POST", "/tools/x", `{"n":-0.5E+99999999999999999999}`), deny.NumberNotCanonical, 400},
		{"rest body of unicode space", httpReq("POST", "/tools/x", "\u00a0"), deny.BadRequest, 400},
		{"rest body of vertical tab", httpReq("POST", "/tools/x", "\v"), deny.BadRequest, 400},
		{"body differs from raw_body", &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/x", Body: `{}`, RawBody: []byte(`{"a":1}`)}, deny.BadRequest, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(tt.req)
			if err == nil {
				t.Fatalf("Parse(%s) = ok, want %s", tt.name, tt.code)
			}
			if err.Code != tt.code || err.Status() != tt.status {
				t.Fatalf("Parse(%s) = %s/%d (%s), want %s/%d", tt.name, err.Code, err.Status(), err.Reason, tt.code, tt.status)
			}
		})
	}
}

// TestParseCallDepthLimit: the arguments may nest 64 levels deep, counted
// from the arguments object, over MCP and REST alike.
func TestParseCallDepthLimit(t *testing.T) {
	nest := func(n int) string { return `{"a":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}` }
	for _, tt := range []struct {
		name string
		req  *authv3.AttributeContext_HttpRequest
		ok   bool
	}{
		{"mcp 64", httpReq("POST", "/mcp", mcpCall("x", nest(64))), true},
		{"rest 64", httpReq("POST", "/tools/x", nest(64)), true},
		{"mcp 65", httpReq("POST", "/mcp", mcpCall("x", nest(65))), false},
		{"rest 65", httpReq("POST", "/tools/x", nest(65)), false},
	} {
		_, err := parse(tt.req)
		if (err == nil) != tt.ok {
			t.Errorf("Parse(%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && err.Code != deny.BadRequest {
			t.Errorf("Parse(%s) = %s, want bad_request", tt.name, err.Code)
		}
	}
}

// manyNames is an object of n distinct names, plus extra (if set) whose
// name equals one of them but for case.
func manyNames(n int, extra string) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		fmt.Fprintf(&b, `"n%d":%d,`, i, i)
	}
	if extra != "" {
		fmt.Fprintf(&b, `%q:0,`, extra)
	}
	b.WriteString(`"z":0}`)
	return b.String()
}

// TestFoldNameMatchesCaseFolding: two names fold alike exactly when
// strings.EqualFold says they are equal (simple case folding) or Unicode
// full case folding makes them equal.
func TestFoldNameMatchesCaseFolding(t *testing.T) {
	words := []string{"path", "PATH", "Path", "s", "S", "ſ", "k", "K", "K", "σ", "Σ", "ς", "ǅ", "ǆ", "Ǆ", "ß", "ẞ", "i", "İ", "ı", "µ", "μ", "Μ", "é", "É", "ω", "Ω", "Ω", "x", "", "ss", "SS", "sS", "ſs", "ﬁ", "fi", "FI", "ﬀ", "ff", "ﬆ", "st", "ﬅ", "ŉ", "ʼn", "ᾈ", "ᾀ", "ἀι"}
	for _, a := range words {
		for _, b := range words {
			same := string(foldName(nil, []byte(a))) == string(foldName(nil, []byte(b)))
			want := strings.EqualFold(a, b) || cases.Fold().String(a) == cases.Fold().String(b)
			if same != want {
				t.Errorf("fold(%q) == fold(%q) is %v, want %v", a, b, same, want)
			}
		}
	}
}

func TestArgsHashIgnoresFormatting(t *testing.T) {
	bodies := []string{
		`{"path":"/etc/hosts","n":1}`,
		`{ "n" : 1.0 , "path" : "/etc/hosts" }`,
		`{"n":1e0,"path":"\/etc\/hosts"}`,
		`{"path":"\u002fetc/hosts","n":10e-1}`,
	}
	var want string
	for i, b := range bodies {
		c, err := parse(httpReq("POST", "/tools/read_file", b))
		if err != nil {
			t.Fatalf("Parse(%s) error %v", b, err)
		}
		if i == 0 {
			want = c.ArgsSHA256
		} else if c.ArgsSHA256 != want {
			t.Errorf("args_sha256(%s) = %s, want %s", b, c.ArgsSHA256, want)
		}
	}
	for _, b := range []string{`{"path":"/etc/hosts","n":2}`, `{"path":"/etc/hosts ","n":1}`, `{"path":"/etc/hosts","n":1,"x":null}`} {
		c, err := parse(httpReq("POST", "/tools/read_file", b))
		if err != nil {
			t.Fatalf("Parse(%s) error %v", b, err)
		}
		if c.ArgsSHA256 == want {
			t.Errorf("args_sha256(%s) equals the original's; a changed value must change it", b)
		}
	}
}

func TestExactNumber(t *testing.T) {
	tests := []struct {
		lit  string
		want bool
	}{
		{"0", true}, {"-0", true}, {"0.0", true}, {"1", true}, {"-1", true}, {"1.0", true}, {"1e2", true}, {"1E+2", true},
		{"0.1", true}, {"0.5", true}, {"123456789012345", true}, {"9007199254740992", true}, {"9007199254740993", false},
		{"18446744073709551616", false}, {"18446744073709552000", true}, {"18446744073709551617", false}, {"1e400", false}, {"-1e400", false},
		{"1e-400", false}, {"5e-324", true}, {"1.7976931348623157e308", true}, {"0.10000000000000000001", false},
		{"3.141592653589793", true}, {"3.1415926535897932", false}, {"100e-2", true}, {"0.000001", true}, {"1.5e-7", true},
		{"1e-99999999999999999999", false}, {"-1e-99999999999999999999", false}, {"1e99999999999999999999", false},
		{"0e99999999999999999999", true}, {"0.0e-99999999999999999999", true},
	}
	for _, tt := range tests {
		if got := exactNumber([]byte(tt.lit)); got != tt.want {
			t.Errorf("exactNumber(%s) = %v, want %v", tt.lit, got, tt.want)
		}
	}
}

// TestCanonicalFormMatchesJCS cross-checks the canonical form against an
// independent RFC 8785 implementation.
func TestCanonicalFormMatchesJCS(t *testing.T) {
	for _, b := range []string{
		`{"b":[1,2.5e10,-0.000001,{"z":"é","a":"\u20ac"}],"a":"\u0000\n\"","€":1,"\ud83d\ude00":2,"\u00e9":3}`,
		`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001]}`,
	} {
		want, err := jcs.Transform([]byte(b))
		if err != nil {
			t.Fatal(err)
		}
		c := Call{Args: []byte(b)}
		if rerr := hashArgs(&c); rerr != nil {
			t.Fatal(rerr)
		}
		if c.ArgsSHA256 != sha(string(want)) {
			t.Errorf("hash of %s differs from sha256(jcs) = sha256(%s)", b, want)
		}
	}
}

// TestParseCallID: the JSON-RPC id is kept exactly as sent (the answer M1
// writes in the tool's place must carry it), and an id is checked as
// strictly as the rest of the body.
func TestParseCallID(t *testing.T) {
	tests := []struct {
		name, body, want string
		wantErr          string // deny code, "" for none
	}{
		{"number", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}`, `7`, ""},
		{"string with escapes", `{"jsonrpc":"2.0","id":"a\u0062\"c","method":"tools/call","params":{"name":"x"}}`, `"a\u0062\"c"`, ""},
		{"after params, spaced", `{"params":{"name":"x"},"method":"tools/call","id" :  "q-1" }`, `"q-1"`, ""},
		{"null", `{"jsonrpc":"2.0","id":null,"method":"ping"}`, `null`, ""},
		{"absent (notification)", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, ``, ""},
		{"response", `{"jsonrpc":"2.0","id":3,"result":{}}`, `3`, ""},
		{"number not canonical", `{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{"name":"x"}}`, ``, deny.NumberNotCanonical},
		{"duplicate id", `{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call","params":{"name":"x"}}`, ``, deny.BadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(httpReq("POST", "/mcp", tt.body))
			switch {
			case tt.wantErr != "" && (err == nil || err.Code != tt.wantErr):
				t.Fatalf("Parse(%s) error = %v, want %s", tt.name, err, tt.wantErr)
			case tt.wantErr != "":
				return
			case err != nil:
				t.Fatalf("Parse(%s) error %v", tt.name, err)
			case string(c.ID) != tt.want:
				t.Fatalf("Parse(%s) ID = %q, want %q", tt.name, c.ID, tt.want)
			}
		})
	}
}

// An http request is truncated, as opa-envoy-plugin reads it, when Envoy
// says so or its content-length promises more than Envoy sent; its body is
// never refused for it (it is not parsed).
func TestParseHTTPTruncated(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  *authv3.AttributeContext_HttpRequest
		want bool
	}{
		{"whole body", httpReq("POST", "/upload", `{"a":1}`, "content-length", "7"), false},
		{"no content-length", httpReq("POST", "/upload", `{"a":1}`), false},
		{"content-length beyond the body", httpReq("POST", "/upload", `{"a":1`, "content-length", "7"), true},
		{"content-length not a number", httpReq("POST", "/upload", `{}`, "content-length", "x"), false},
		{"envoy says partial", httpReq("POST", "/upload", `{}`, "x-envoy-auth-partial-body", "true"), true},
	} {
		c, err := parse(tc.req)
		if err != nil || c.Kind != KindHTTP || c.Truncated != tc.want {
			t.Errorf("Parse(%s) = kind %q truncated %v, %v; want http, truncated %v", tc.name, c.Kind, c.Truncated, err, tc.want)
		}
	}
}
