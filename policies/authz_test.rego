package m1.authz_test

import rego.v1

import data.m1.authz

# Inputs as the sidecar builds them (only input.m1; the policy reads nothing
# else).

claims := {"sub": "agent-42", "jti": "j-1", "m1": {"kind": "approval", "tool": "write_file"}}

tool_call(tool, token) := {"m1": {
	"kind": "tool_call",
	"tool": tool,
	"args": {},
	"args_sha256": "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
	"principal": "agent-42",
	"token": token,
	"request": {"method": "POST", "host": "tools.local", "path": "/mcp"},
}}

mcp(method) := {"m1": {
	"kind": "mcp",
	"mcp_method": method,
	"principal": "",
	"token": null,
	"request": {"method": "POST", "host": "tools.local", "path": "/mcp"},
}}

allowed := {"allowed": true}

denied(reason, status) := {"allowed": false, "reason": reason, "http_status": status}

# --- tool calls ---

test_tool_call_read_without_approval_allowed if {
	authz.decision == allowed with input as tool_call("read_file", null)
	authz.decision == allowed with input as tool_call("list_dir", null)
}

test_tool_call_read_with_token_allowed if {
	authz.decision == allowed with input as tool_call("read_file", claims)
}

test_tool_call_approval_without_token_denied if {
	authz.decision == denied("token_missing", 401) with input as tool_call("write_file", null)
	authz.decision == denied("token_missing", 401) with input as tool_call("run_command", null)
}

test_tool_call_approval_token_key_absent_denied if {
	inp := json.remove(tool_call("write_file", null), ["m1/token"])
	authz.decision == denied("token_missing", 401) with input as inp
}

test_tool_call_approval_token_not_object_denied if {
	authz.decision == denied("token_missing", 401) with input as tool_call("write_file", "eyJ...")
	authz.decision == denied("token_missing", 401) with input as tool_call("write_file", true)
}

test_tool_call_approval_with_token_allowed if {
	authz.decision == allowed with input as tool_call("write_file", claims)
	authz.decision == allowed with input as tool_call("run_command", claims)
}

test_tool_call_unknown_tool_denied if {
	authz.decision == denied("unknown_tool", 403) with input as tool_call("delete_everything", null)
	authz.decision == denied("unknown_tool", 403) with input as tool_call("delete_everything", claims)
}

test_tool_call_tool_name_absent_denied if {
	inp := json.remove(tool_call("read_file", null), ["m1/tool"])
	authz.decision == denied("unknown_tool", 403) with input as inp
}

test_tool_call_entry_without_flag_requires_approval if {
	tools := {"new_tool": {"risk": "write"}}
	authz.decision == denied("token_missing", 401) with input as tool_call("new_tool", null) with data.m1.tools as tools
	authz.decision == allowed with input as tool_call("new_tool", claims) with data.m1.tools as tools
}

test_tool_call_no_registry_denied if {
	authz.decision == denied("unknown_tool", 403) with input as tool_call("read_file", null) with data.m1.tools as {}
}

test_registry_matches_design if {
	data.m1.tools.read_file.risk == "read"
	data.m1.tools.read_file.requires_approval == false
	data.m1.tools.list_dir.risk == "read"
	data.m1.tools.list_dir.requires_approval == false
	data.m1.tools.write_file.risk == "write"
	data.m1.tools.write_file.requires_approval == true
	data.m1.tools.run_command.risk == "execute"
	data.m1.tools.run_command.requires_approval == true
	data.m1.tools.run_command.sensitive == true
}

# --- MCP protocol traffic ---

test_mcp_allowed_methods if {
	every method in ["initialize", "ping", "tools/list", "server/discover"] {
		authz.decision == allowed with input as mcp(method)
	}
}

test_mcp_notifications_allowed if {
	every method in ["notifications/initialized", "notifications/cancelled", "notifications/progress"] {
		authz.decision == allowed with input as mcp(method)
	}
}

test_mcp_response_and_session_stream_allowed if {
	authz.decision == allowed with input as mcp("")
}

test_mcp_other_methods_denied if {
	every method in [
		"resources/list", "resources/read", "prompts/get", "completion/complete",
		"logging/setLevel", "tools/call", "notifications", "Initialize", "tools/list/x", "server/Discover",
	] {
		authz.decision == denied("mcp_method_not_allowed", 403) with input as mcp(method)
	}
}

test_mcp_method_absent_denied if {
	inp := json.remove(mcp("ping"), ["m1/mcp_method"])
	authz.decision == denied("mcp_method_not_allowed", 403) with input as inp
}

test_mcp_method_not_string_denied if {
	authz.decision == denied("mcp_method_not_allowed", 403) with input as mcp(42)
}

# --- plain HTTP ---

test_http_denied if {
	inp := {"m1": {"kind": "http", "principal": "", "token": null, "request": {"method": "GET", "host": "tools.local", "path": "/"}}}
	authz.decision == denied("not_a_tool_call", 403) with input as inp
}

test_http_with_token_denied if {
	inp := {"m1": {"kind": "http", "principal": "agent-42", "token": claims, "request": {"method": "POST", "host": "tools.local", "path": "/admin"}}}
	authz.decision == denied("not_a_tool_call", 403) with input as inp
}

# --- default deny ---

test_default_deny if {
	authz.decision == denied("default_deny", 403) with input as {}
	authz.decision == denied("default_deny", 403) with input as {"m1": {}}
	authz.decision == denied("default_deny", 403) with input as {"m1": {"kind": "grpc"}}
	authz.decision == denied("default_deny", 403) with input as {"m1": {"kind": ["tool_call"]}}
}

test_default_deny_without_input if {
	authz.decision == denied("default_deny", 403)
}

# Only input.m1 matters: opa-envoy-plugin keys cannot turn a deny into an allow.
test_ignores_envoy_input if {
	inp := object.union(tool_call("write_file", null), {
		"attributes": {"request": {"http": {"method": "POST", "headers": {"x-m1-approval-token": "forged"}}}},
		"parsed_path": ["mcp"],
		"parsed_body": {"method": "tools/call"},
	})
	authz.decision == denied("token_missing", 401) with input as inp
}

test_tool_call_token_without_kind_denied if {
	authz.decision == denied("token_missing", 401) with input as tool_call("write_file", {"sub": "agent-42"})
	authz.decision == denied("token_missing", 401) with input as tool_call("write_file", {"m1": {"kind": "other"}})
}

test_tool_call_grant_token_allowed if {
	grant := {"sub": "agent-42", "jti": "g-1", "m1": {"kind": "grant", "tools": ["write_*"], "max_uses": 3}}
	authz.decision == allowed with input as tool_call("write_file", grant)
}
