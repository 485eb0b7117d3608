# M1's default authorization policy.
#
# The sidecar evaluates data.m1.authz.decision (M1_POLICY_PATH m1/authz/decision)
# after its hard checks: by the time this policy runs, a token in input.m1.token
# has been verified and bound to this exact call (tool and args_sha256), and is
# not revoked. The policy only decides what needs a token and what is allowed at
# all.
#
# The decision is the opa-envoy-plugin object form: allowed, and on deny a
# stable reason code and an http_status.
#
# It reads nothing but input.m1 and calls no non-deterministic built-in, so M1
# may cache its decisions (DESIGN §5). Keep it that way when editing, or the
# decision cache turns off (/health says why).
package m1.authz

import rego.v1

# Anything not matched below is denied.
default decision := {"allowed": false, "reason": "default_deny", "http_status": 403}

# Tool calls: MCP tools/call, or POST {M1_TOOLS_PATH_PREFIX}{name}.
decision := tool_call_decision if input.m1.kind == "tool_call"

# Other MCP traffic: the protocol's own methods, never a tool.
decision := mcp_decision if input.m1.kind == "mcp"

# Plain HTTP to the tool service is not a tool call and is refused.
decision := deny("not_a_tool_call", 403) if input.m1.kind == "http"

tool_call_decision := deny("unknown_tool", 403) if {
	not known_tool
} else := deny("token_missing", 401) if {
	requires_approval
	not has_token
} else := allow

known_tool if data.m1.tools[input.m1.tool]

# A registry entry requires approval unless it says requires_approval: false,
# so a tool whose entry forgets the flag fails closed.
requires_approval if not data.m1.tools[input.m1.tool].requires_approval == false

# The Go side sets input.m1.token to the verified claims, or null without a
# token; a missing key also counts as no token. Reading only the token's
# m1.kind (not the whole token) keeps the decision cacheable across fresh
# approvals: the cache is keyed by the input.m1 paths a policy reads, and
# every approval's jti, iat and exp differ.
has_token if input.m1.token.m1.kind in {"approval", "grant"}

mcp_decision := allow if {
	mcp_method_allowed
} else := deny("mcp_method_not_allowed", 403)

# Session set-up, liveness and tool discovery; server/discover is the
# stateless (MCP 2026-07-28) discovery that replaces initialize.
mcp_allowed_methods := {"initialize", "ping", "tools/list", "server/discover"}

mcp_method_allowed if input.m1.mcp_method in mcp_allowed_methods

# Notifications (notifications/initialized, notifications/cancelled, ...)
# carry no request and run no tool.
mcp_method_allowed if startswith(input.m1.mcp_method, "notifications/")

# An empty method is a JSON-RPC response the client sends back to the server
# (to a ping, sampling or elicitation request), or the GET session stream and
# DELETE session end of Streamable HTTP. None of these can run a tool (that
# takes tools/call, which is kind "tool_call"), and denying them breaks MCP
# clients, so they are allowed.
mcp_method_allowed if input.m1.mcp_method == ""

allow := {"allowed": true}

deny(reason, status) := {"allowed": false, "reason": reason, "http_status": status}
