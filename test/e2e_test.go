package test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Fixtures the table edits most.
const (
	mcpRead  = "mcp-tools-call-read-file"
	restList = "rest-tools-list-dir"
)

const authzService = "envoy.service.auth.v3.Authorization"

// TestCheck runs the CheckRequest fixtures, and variants of them, through
// the default policy: what is allowed, what the policy denies, and every
// request DESIGN §3 refuses to guess at.
func TestCheck(t *testing.T) {
	t.Parallel()
	const maxBody = 4096
	s := startSidecar(t, []string{"--max-body-bytes", fmt.Sprint(maxBody)})

	long := strings.Repeat("x", 129)
	tests := []struct {
		name    string
		fixture string
		edits   []edit
		want    want
	}{
		// Allowed tool calls.
		{"mcp read_file", mcpRead, nil, allow},
		{"rest list_dir", restList, nil, allow},
		{"rest read_file raw_body", "rest-tools-read-file-raw-body", nil, allow},
		{"mcp read_file without arguments", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file"}}`)}, allow},
		{"rest read_file empty body", restList, []edit{withPath("/tools/read_file"), withBody("")}, allow},
		{"mcp path with query", mcpRead, []edit{withPath("/mcp?session=1")}, allow},
		{"mcp nesting 64", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":` + nested(64) + `}`))}, allow},
		{"rest JSON with charset", restList, []edit{withHeader("content-type", "application/json; charset=utf-8")}, allow},
		{"rest +json media type", restList, []edit{withHeader("content-type", "application/merge-patch+json")}, allow},
		{"mcp routing headers agree", mcpRead, []edit{withHeader("mcp-method", "tools/call"), withHeader("mcp-name", "read_file")}, allow},
		{"mcp stateless server/discover", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}`), withHeader("mcp-method", "server/discover")}, allow},
		{"mcp annotations grant nothing", mcpRead, []edit{withBody(mcpCall(`{"name":"write_file","arguments":{"path":"x"},"annotations":{"readOnlyHint":true,"destructiveHint":false},"_meta":{"readOnlyHint":true}}`))}, denyReason(401, "policy_denied", "token_missing")},
		{"mcp integer 2^53", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"offset":9007199254740992}}`))}, allow},
		{"mcp exact numbers", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"a":1.0,"b":1e2,"c":0.1,"d":-5}}`))}, allow},
		{"rest nesting 64", restList, []edit{withBody(nested(64))}, allow},
		{"rest header_map", "rest-tools-list-dir-header-map", nil, allow},
		{"mcp escaped method and name", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":7,"method":"tools\/call","params":{"name":"read\u005ffile"}}`)}, allow},
		{"mcp name inside arguments is not the tool", mcpRead, []edit{withBody(mcpCall(`{"arguments":{"name":"write_file"},"name":"read_file"}`))}, allow},

		// Denied by the default policy.
		{"mcp write_file no token", "mcp-tools-call-write-file-no-token", nil, denyReason(401, "policy_denied", "token_missing")},
		{"mcp write_file method after params", mcpRead, []edit{withBody(`{"params":{"arguments":{},"name":"write_file"},"id":8,"method":"tools/call","jsonrpc":"2.0"}`)}, denyReason(401, "policy_denied", "token_missing")},
		{"mcp write_file escaped keys", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":8,"\u006dethod":"tools\u002fcall","p\u0061rams":{"n\u0061me":"write\u005ffile"}}`)}, denyReason(401, "policy_denied", "token_missing")},
		{"rest run_command no token", restList, []edit{withPath("/tools/run_command"), withBody(`{"cmd":"ls"}`)}, denyReason(401, "policy_denied", "token_missing")},
		{"mcp unknown tool", "mcp-tools-call-unknown-tool", nil, denyReason(403, "policy_denied", "unknown_tool")},
		{"mcp unknown tool name 128 chars", mcpRead, []edit{withBody(mcpCall(`{"name":"` + long[:128] + `"}`))}, denyReason(403, "policy_denied", "unknown_tool")},
		{"rest unknown tool", restList, []edit{withPath("/tools/delete_everything")}, denyReason(403, "policy_denied", "unknown_tool")},
		{"http GET /other", "http-get-other", nil, denyReason(403, "policy_denied", "not_a_tool_call")},
		{"http GET tool path", "http-get-other", []edit{withPath("/tools/read_file")}, denyReason(403, "policy_denied", "not_a_tool_call")},
		{"http PUT /mcp", mcpRead, []edit{withMethod("PUT")}, denyReason(403, "policy_denied", "not_a_tool_call")},
		{"mcp resources/read", "mcp-resources-read", nil, denyReason(403, "policy_denied", "mcp_method_not_allowed")},
		{"mcp prompts/get", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":5,"method":"prompts/get","params":{"name":"p"}}`)}, denyReason(403, "policy_denied", "mcp_method_not_allowed")},

		// MCP's own traffic.
		{"mcp initialize", "mcp-initialize", nil, allow},
		{"mcp ping", "mcp-ping", nil, allow},
		{"mcp tools/list", "mcp-tools-list", nil, allow},
		{"mcp notifications/initialized", "mcp-notifications-initialized", nil, allow},
		{"mcp JSON-RPC response", "mcp-response", nil, allow},
		{"mcp GET session stream", "mcp-get-stream", nil, allow},
		{"mcp DELETE session", "mcp-delete-session", nil, allow},

		// Framing: 413 body_too_large.
		{"partial body", "mcp-partial-body", nil, deny(413, "body_too_large")},
		{"rest partial body", restList, []edit{withHeader("x-envoy-auth-partial-body", "true")}, deny(413, "body_too_large")},
		{"content-length larger than body", mcpRead, []edit{withHeader("content-length", "111")}, deny(413, "body_too_large")},
		{"body over max-body-bytes", restList, []edit{withPath("/tools/read_file"), withBody(restBodyOfSize(maxBody + 1))}, deny(413, "body_too_large")},
		{"mcp body over max-body-bytes", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":` + restBodyOfSize(maxBody) + `}`))}, deny(413, "body_too_large")},
		{"body at max-body-bytes", restList, []edit{withPath("/tools/read_file"), withBody(restBodyOfSize(maxBody))}, allow},

		// Framing: 400 bad_request.
		{"content-length smaller than body", mcpRead, []edit{withHeader("content-length", "109")}, deny(400, "bad_request")},
		{"content-length not a number", mcpRead, []edit{withHeader("content-length", "abc")}, deny(400, "bad_request")},
		{"content-length negative", mcpRead, []edit{withHeader("content-length", "-110")}, deny(400, "bad_request")},
		{"content-length with plus sign", mcpRead, []edit{withHeader("content-length", "+110")}, deny(400, "bad_request")},
		{"content-length empty", mcpRead, []edit{withHeader("content-length", "")}, deny(400, "bad_request")},
		{"content-length repeated in header_map", "rest-tools-list-dir-header-map", []edit{withHeaderMapEntry("content-length", "21")}, deny(400, "bad_request")},

		// Bodies: 400 bad_request.
		{"mcp not JSON", mcpRead, []edit{withBody(`jsonrpc=2.0&method=tools/call`)}, deny(400, "bad_request")},
		{"mcp truncated JSON", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file"`)}, deny(400, "bad_request")},
		{"mcp empty body", mcpRead, []edit{withBody("")}, deny(400, "bad_request")},
		{"mcp data after the message", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file"}`) + `{}`)}, deny(400, "bad_request")},
		{"rest not JSON", restList, []edit{withBody(`path=/workspace`)}, deny(400, "bad_request")},
		{"rest gzip body", restList, []edit{withRawBody(gzipped(`{"path":"/workspace"}`)), withHeader("content-encoding", "gzip")}, deny(400, "bad_request")},
		{"rest byte order mark", restList, []edit{withBody("\ufeff" + `{"path":"/workspace"}`)}, deny(400, "bad_request")},
		{"mcp invalid UTF-8 raw_body", "mcp-raw-body-invalid-utf8", nil, deny(400, "bad_request")},
		{"rest lone surrogate escape", restList, []edit{withBody(`{"path":"/tmp/\ud800"}`)}, deny(400, "bad_request")},
		{"rest invalid UTF-8 raw_body", restList, []edit{withRawBody([]byte("{\"path\":\"/tmp/\xc3\x28\"}"))}, deny(400, "bad_request")},
		{"mcp batch", mcpRead, []edit{withBody(`[` + mcpCall(`{"name":"read_file"}`) + `]`)}, deny(400, "bad_request")},
		{"mcp empty batch", mcpRead, []edit{withBody(`[]`)}, deny(400, "bad_request")},
		{"mcp message null", mcpRead, []edit{withBody(`null`)}, deny(400, "bad_request")},
		{"mcp message string", mcpRead, []edit{withBody(`"tools/call"`)}, deny(400, "bad_request")},
		{"mcp params null", mcpRead, []edit{withBody(mcpCall(`null`))}, deny(400, "bad_request")},
		{"mcp params array", mcpRead, []edit{withBody(mcpCall(`["read_file",{}]`))}, deny(400, "bad_request")},
		{"mcp params string", mcpRead, []edit{withBody(mcpCall(`"read_file"`))}, deny(400, "bad_request")},
		{"mcp arguments null", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":null}`))}, deny(400, "bad_request")},
		{"mcp arguments array", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":["/etc/hosts"]}`))}, deny(400, "bad_request")},
		{"mcp arguments string", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":"/etc/hosts"}`))}, deny(400, "bad_request")},
		{"rest body null", restList, []edit{withBody(`null`)}, deny(400, "bad_request")},
		{"rest body array", restList, []edit{withBody(`[{"path":"/"}]`)}, deny(400, "bad_request")},
		{"rest body string", restList, []edit{withBody(`"/workspace"`)}, deny(400, "bad_request")},
		{"rest body number", restList, []edit{withBody(`42`)}, deny(400, "bad_request")},
		{"mcp nesting 65", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":` + nested(65) + `}`))}, deny(400, "bad_request")},
		{"rest nesting 65", restList, []edit{withBody(nested(65))}, deny(400, "bad_request")},
		{"rest nesting 65 in arrays", restList, []edit{withBody(`{"a":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`)}, deny(400, "bad_request")},
		{"mcp duplicate key top", mcpRead, []edit{withBody(`{"jsonrpc":"2.0","id":7,"method":"ping","method":"tools/call","params":{"name":"read_file"}}`)}, deny(400, "bad_request")},
		{"mcp duplicate params.name", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","name":"run_command"}`))}, deny(400, "bad_request")},
		{"mcp duplicate key deep", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"opts":{"x":[{"k":1,"k":2}]}}}`))}, deny(400, "bad_request")},
		{"mcp duplicate key escaped", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"path":"/etc/hosts","p\u0061th":"/etc/shadow"}}`))}, deny(400, "bad_request")},
		{"mcp duplicate params escaped", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","n\u0061me":"run_command"}`))}, deny(400, "bad_request")},
		{"rest duplicate key", restList, []edit{withBody(`{"path":"/a","path":"/b"}`)}, deny(400, "bad_request")},

		// Names equal under Unicode case folding: a tool reading them with
		// Go's encoding/json (or any case-insensitive reader) would see
		// another value than the policy and the approval.
		{"rest names differ in case", restList, []edit{withPath("/tools/read_file"), withBody(`{"path":"public.txt","PATH":"secret.txt"}`)}, deny(400, "bad_request")},
		{"mcp names differ in case", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"path":"public.txt","PATH":"secret.txt"}}`))}, deny(400, "bad_request")},
		{"mcp names differ by long s deep", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"o":[{"s":1,"\u017f":2}]}}`))}, deny(400, "bad_request")},

		// Media types a tool may parse as something else than JSON: 415.
		{"rest form media type", restList, []edit{withHeader("content-type", "application/x-www-form-urlencoded")}, deny(415, "unsupported_media_type")},
		{"mcp multipart media type", mcpRead, []edit{withHeader("content-type", "multipart/form-data; boundary=b")}, deny(415, "unsupported_media_type")},
		{"rest text media type", restList, []edit{withHeader("content-type", "text/plain")}, deny(415, "unsupported_media_type")},

		// MCP routing headers that disagree with the body: 400.
		{"mcp-method disagrees", mcpRead, []edit{withHeader("mcp-method", "tools/list")}, deny(400, "header_mismatch")},
		{"mcp-name disagrees", mcpRead, []edit{withHeader("mcp-method", "tools/call"), withHeader("mcp-name", "write_file")}, deny(400, "header_mismatch")},

		// Numbers JCS cannot hash faithfully.
		{"mcp integer above 2^53", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","arguments":{"offset":9007199254740993}}`))}, deny(400, "number_not_canonical")},
		{"rest integer above 2^53", restList, []edit{withBody(`{"limit":18446744073709551615}`)}, deny(400, "number_not_canonical")},
		{"rest over-precise decimal", restList, []edit{withBody(`{"x":0.10000000000000000001}`)}, deny(400, "number_not_canonical")},
		{"mcp number in params outside arguments", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file","_meta":{"progressToken":9007199254740993}}`))}, deny(400, "number_not_canonical")},

		// Paths.
		{"rest path ..", restList, []edit{withPath("/tools/../tools/list_dir")}, deny(400, "bad_path")},
		{"rest path .", restList, []edit{withPath("/tools/./list_dir")}, deny(400, "bad_path")},
		{"rest path //", restList, []edit{withPath("/tools//list_dir")}, deny(400, "bad_path")},
		{"mcp path //", mcpRead, []edit{withPath("//mcp")}, deny(400, "bad_path")},
		{"mcp path trailing /", mcpRead, []edit{withPath("/mcp/")}, deny(400, "bad_path")},
		{"mcp path %2e%2e", mcpRead, []edit{withPath("/x/%2e%2e/mcp")}, deny(400, "bad_path")},
		{"rest path %2e%2e", restList, []edit{withPath("/tools/%2e%2e/tools/list_dir")}, deny(400, "bad_path")},
		{"rest path %2E%2E", restList, []edit{withPath("/tools/%2E%2E/tools/list_dir")}, deny(400, "bad_path")},
		{"rest path %2e", restList, []edit{withPath("/tools/%2e/list_dir")}, deny(400, "bad_path")},
		{"rest path encoded slash", restList, []edit{withPath("/tools/list_dir%2F..%2Fread_file")}, deny(400, "bad_path")},
		{"rest tool name with encoded slash", restList, []edit{withPath("/tools/list%2Fdir")}, deny(400, "bad_path")},
		{"rest path bad percent-encoding", restList, []edit{withPath("/tools/list_dir%zz")}, deny(400, "bad_path")},
		{"rest path .. with query", restList, []edit{withPath("/tools/../x?y=1")}, deny(400, "bad_path")},
		{"rest query on a tool path", restList, []edit{withPath("/tools/list_dir?recursive=1")}, deny(400, "bad_path")},
		{"rest empty query on a tool path", restList, []edit{withPath("/tools/list_dir?")}, deny(400, "bad_path")},

		// Tool names.
		{"rest empty tool name", restList, []edit{withPath("/tools/")}, deny(400, "bad_path")},
		{"rest tool name with space", restList, []edit{withPath("/tools/list%20dir")}, deny(400, "bad_path")},
		{"rest tool name 129 chars", restList, []edit{withPath("/tools/" + long)}, deny(400, "bad_path")},
		{"rest tool name double-encoded", restList, []edit{withPath("/tools/%252e%252e")}, deny(400, "bad_path")},
		{"mcp tool name 129 chars", mcpRead, []edit{withBody(mcpCall(`{"name":"` + long + `"}`))}, deny(400, "bad_path")},
		{"mcp empty tool name", mcpRead, []edit{withBody(mcpCall(`{"name":""}`))}, deny(400, "bad_path")},
		{"mcp tool name with slash", mcpRead, []edit{withBody(mcpCall(`{"name":"../read_file"}`))}, deny(400, "bad_path")},
		{"mcp tool name with NUL", mcpRead, []edit{withBody(mcpCall(`{"name":"read_file\u0000"}`))}, deny(400, "bad_path")},
		{"mcp tool name unicode", mcpRead, []edit{withBody(mcpCall(`{"name":"read_fil\u00e9"}`))}, deny(400, "bad_path")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := s.check(t, request(t, tt.fixture, tt.edits...))
			expect(t, tt.name, resp, tt.want)
		})
	}
}

// TestAllowResponse checks the wire shape of an allow (DESIGN §6): M1's
// headers overwrite whatever the client sent, every other client-sent
// x-m1-* header and the approval header are removed, and the dynamic
// metadata names the decision, tool and principal.
func TestAllowResponse(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, nil)
	tests := []struct {
		name      string
		fixture   string
		tool      string
		principal string // mTLS source principal of the fixture
		edits     []edit
	}{
		{"mcp read_file", mcpRead, "read_file", "spiffe://cluster.local/ns/agents/sa/agent-42", nil},
		{"rest list_dir", restList, "list_dir", "", nil},
		{"rest list_dir header_map", "rest-tools-list-dir-header-map", "list_dir", "", nil},
		// CGI, WSGI and PHP servers read x_m1_principal as x-m1-principal.
		{"mcp read_file underscore headers", mcpRead, "read_file", "spiffe://cluster.local/ns/agents/sa/agent-42", []edit{
			withHeader("x_m1_principal", "spoof"), withHeader("x-m1_run_id", "run-forged"),
			withHeader("x_m1_decision_id", "forged"), withHeader("x_m1_approval_token", "eyJ"),
		}},
		{"rest list_dir underscore headers in header_map", "rest-tools-list-dir-header-map", "list_dir", "", []edit{
			withHeaderMapEntry("x_m1_principal", "spoof"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, tt.fixture, tt.edits...)
			sent := sentHeaders(req)
			resp := s.check(t, req)
			expect(t, tt.name, resp, allow)
			ok := resp.GetOkResponse()
			if ok == nil {
				t.Fatalf("Check(%s): no ok_response", tt.name)
			}

			set := map[string]string{}
			for _, h := range ok.GetHeaders() {
				k := h.GetHeader().GetKey()
				set[k] = h.GetHeader().GetValue()
				if a := h.GetAppendAction(); a != corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					t.Errorf("Check(%s): header %s append_action = %v, want OVERWRITE_IF_EXISTS_OR_ADD", tt.name, k, a)
				}
			}
			id := set["x-m1-decision-id"]
			if id == "" || id == sent["x-m1-decision-id"] {
				t.Errorf("Check(%s): x-m1-decision-id = %q, want M1's decision id", tt.name, id)
			}
			if tt.principal != "" && set["x-m1-principal"] != tt.principal {
				t.Errorf("Check(%s): x-m1-principal = %q, want %q", tt.name, set["x-m1-principal"], tt.principal)
			}

			removed := ok.GetHeadersToRemove()
			if !slices.Contains(removed, "x-m1-approval-token") {
				t.Errorf("Check(%s): headers_to_remove = %q, want x-m1-approval-token in it", tt.name, removed)
			}
			// A client-sent x-m1-* header never reaches the tool: M1
			// either overwrites it with its own value or removes it.
			for k := range sent {
				_, overwritten := set[k]
				isRemoved := slices.Contains(removed, k)
				m1 := strings.HasPrefix(strings.ReplaceAll(k, "_", "-"), "x-m1-")
				switch {
				case m1 && !overwritten && !isRemoved:
					t.Errorf("Check(%s): client header %s is neither removed nor overwritten (headers_to_remove %q)", tt.name, k, removed)
				case !m1 && isRemoved:
					t.Errorf("Check(%s): headers_to_remove has %s, which is not M1's to remove", tt.name, k)
				}
			}
			// Envoy removes after it sets: a header both set and removed
			// would not reach the tool at all.
			for _, k := range removed {
				if _, ok := set[k]; ok {
					t.Errorf("Check(%s): %s is both set and removed", tt.name, k)
				}
			}

			md := resp.GetDynamicMetadata().GetFields()
			for k, want := range map[string]string{"decision_id": id, "tool": tt.tool, "principal": tt.principal} {
				v, ok := md[k]
				if !ok || v.GetStringValue() != want {
					t.Errorf("Check(%s): dynamic_metadata[%s] = %v, want %q", tt.name, k, v, want)
				}
			}
		})
	}
}

// TestDenyResponse checks the wire shape of a deny: the JSON body of
// DESIGN §6, its decision id also in x-m1-decision-id.
func TestDenyResponse(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, nil)
	const name = "mcp write_file no token"
	resp := s.check(t, fixture(t, "mcp-tools-call-write-file-no-token"))
	doc := expect(t, name, resp, denyReason(401, "policy_denied", "token_missing"))
	if got := headerValue(resp.GetDeniedResponse().GetHeaders(), "x-m1-decision-id"); got != doc.DecisionID {
		t.Errorf("Check(%s): x-m1-decision-id = %q, want the body's decision_id %q", name, got, doc.DecisionID)
	}
	md := resp.GetDynamicMetadata().GetFields()
	if got := md["decision_id"].GetStringValue(); got != doc.DecisionID {
		t.Errorf("Check(%s): dynamic_metadata decision_id = %q, want %q", name, got, doc.DecisionID)
	}
	// A CheckRequest without attributes is a bad request, not a gRPC error.
	expect(t, "empty CheckRequest", s.check(t, &authv3.CheckRequest{}), deny(400, "bad_request"))
	// Two decisions never share an id.
	doc2 := expect(t, name, s.check(t, fixture(t, "mcp-tools-call-write-file-no-token")), denyReason(401, "policy_denied", "token_missing"))
	if doc2.DecisionID == doc.DecisionID {
		t.Errorf("Check(%s) twice: both decisions have id %q", name, doc.DecisionID)
	}
}

// TestCustomNames checks that M1_MCP_PATH, --tools-path-prefix,
// --approval-header and --policy-path move what they name.
func TestCustomNames(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, map[string]string{"gate.rego": `package acme.gate

import rego.v1

default allow := false

allow if {
	input.m1.kind == "tool_call"
	input.m1.tool in {"read_file", "list_dir"}
}

allow if input.m1.kind == "mcp"
`})
	s := startSidecar(t, []string{
		"--policy-dir", dir, "--policy-path", "acme/gate/allow",
		"--tools-path-prefix", "/api/tools/", "--approval-header", "X-Approval",
	}, "M1_MCP_PATH=/rpc")

	initialize := fixture(t, "mcp-initialize").GetAttributes().GetRequest().GetHttp().GetBody()
	tests := []struct {
		name    string
		fixture string
		edits   []edit
		want    want
	}{
		{"mcp read_file on /rpc", mcpRead, []edit{withPath("/rpc?session=abc")}, allow},
		{"mcp write_file on /rpc", "mcp-tools-call-write-file-no-token", []edit{withPath("/rpc")}, deny(403, "policy_denied")},
		{"mcp initialize on /rpc", "mcp-initialize", []edit{withPath("/rpc")}, allow},
		{"initialize on /mcp is plain HTTP", mcpRead, []edit{withBody(initialize)}, deny(403, "policy_denied")},
		{"mcp batch on /rpc", mcpRead, []edit{withPath("/rpc"), withBody("[]")}, deny(400, "bad_request")},
		{"rest list_dir on /api/tools/", restList, []edit{withPath("/api/tools/list_dir")}, allow},
		{"rest list_dir on /tools/ is plain HTTP", restList, nil, deny(403, "policy_denied")},
		{"rest bad tool name on /api/tools/", restList, []edit{withPath("/api/tools/list%2Fdir")}, deny(400, "bad_path")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expect(t, tt.name, s.check(t, request(t, tt.fixture, tt.edits...)), tt.want)
		})
	}

	// The approval header is the configured one; x-m1-approval-token is
	// then just another client-sent x-m1-* header.
	resp := s.check(t, request(t, mcpRead, withPath("/rpc"), withHeader("x-m1-approval-token", "not-the-token-header")))
	expect(t, "mcp read_file on /rpc", resp, allow)
	removed := resp.GetOkResponse().GetHeadersToRemove()
	for _, h := range []string{"x-approval", "x-m1-approval-token", "x-m1-foo"} {
		if !slices.Contains(removed, h) {
			t.Errorf("Check(mcp read_file on /rpc): headers_to_remove = %q, want %s in it", removed, h)
		}
	}
}

// TestConcurrentChecks sends checks from several goroutines at once; with
// -race the binary is race-instrumented, and a race fails the test when
// the process exits.
func TestConcurrentChecks(t *testing.T) {
	t.Parallel()
	s := startSidecar(t, []string{"--cache-size", "64"})
	type job struct {
		name string
		req  *authv3.CheckRequest
		want want
	}
	var jobs []job
	for i := range 8 {
		args := fmt.Sprintf(`{"path":"/w/%d","opts":{"n":%d,"tags":["a","b"]}}`, i, i)
		jobs = append(jobs,
			job{"mcp read_file " + args, request(t, mcpRead, withBody(mcpCall(`{"name":"read_file","arguments":`+args+`}`))), allow},
			job{"rest list_dir " + args, request(t, restList, withBody(args)), allow},
			job{"mcp write_file " + args, request(t, mcpRead, withBody(mcpCall(`{"name":"write_file","arguments":`+args+`}`))), deny(401, "policy_denied")},
			job{"mcp duplicate key", request(t, mcpRead, withBody(mcpCall(`{"name":"read_file","name":"x"}`))), deny(400, "bad_request")},
			job{"mcp ping", fixture(t, "mcp-ping"), allow},
		)
	}
	const workers, rounds = 6, 5
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	client := authv3.NewAuthorizationClient(s.conn)
	errs := make(chan string, workers*rounds*len(jobs))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				for i := range jobs {
					j := jobs[(i+w*7+r)%len(jobs)]
					resp, err := client.Check(ctx, j.req)
					if err != nil {
						errs <- fmt.Sprintf("Check(%s): gRPC error %v", j.name, err)
						continue
					}
					got, _, err := outcome(resp, false)
					if err != nil {
						errs <- fmt.Sprintf("Check(%s): %v", j.name, err)
					} else if got != j.want {
						errs <- fmt.Sprintf("Check(%s) = %v, want %v", j.name, got, j.want)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	n := 0
	for e := range errs {
		if n++; n <= 10 {
			t.Error(e)
		}
	}
	if n > 10 {
		t.Errorf("… and %d more", n-10)
	}
}
