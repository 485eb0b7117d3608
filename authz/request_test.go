package authz

import (
	"crypto/sha256"
	"encoding/hex"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/toolcall"
)

// httpReq is the HTTP part of a CheckRequest as Envoy sends it; headers
// are name, value pairs (lower-case names).
func httpReq(method, path, body string, headers ...string) *authv3.AttributeContext_HttpRequest {
	h := map[string]string{}
	for i := 0; i+1 < len(headers); i += 2 {
		h[headers[i]] = headers[i+1]
	}
	return &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Host: "tools.local", Headers: h, Body: body}
}

// mcpCall is a JSON-RPC tools/call of name with raw JSON arguments.
func mcpCall(name, args string) string {
	return `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + name + `","arguments":` + args + `}}`
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

var testParseOpts = toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20}
