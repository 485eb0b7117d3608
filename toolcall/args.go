package toolcall

import (
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/internal/deny"
)

// ArgsSHA256 validates args as the arguments of a call of tool exactly as
// the sidecar does (one JSON object; unique member names; valid UTF-8;
// numbers a double represents exactly; nesting depth) and returns the hex
// SHA-256 of their RFC 8785 (JCS) form: the m1.args_sha256 that binds an
// approval to the call. It parses a synthetic POST /tools/<tool> request
// with Parse, so the checks and the hash are the sidecar's own. Empty
// args are {}, as for a call without a body. The error is a *Error
// for arguments the sidecar would refuse.
func ArgsSHA256(tool string, args []byte) (string, error) {
	if !ValidName(tool) {
		return "", &Error{Code: deny.BadPath, Reason: fmt.Sprintf("tool %q: want 1 to 128 of [A-Za-z0-9_.-]", tool)}
	}
	req := &authv3.AttributeContext_HttpRequest{Method: "POST", Path: DefaultToolsPathPrefix + tool, RawBody: args}
	call, rerr := Parse(req, HeadersOf(req), Options{MCPPath: DefaultMCPPath, ToolsPathPrefix: DefaultToolsPathPrefix})
	if rerr != nil {
		return "", rerr
	}
	if call.Kind != KindToolCall || call.Tool != tool {
		return "", badPath(fmt.Sprintf("tool %q: not parsed as a tool call", tool))
	}
	return call.ArgsSHA256, nil
}
