package approval

import "github.com/m1-agent/m1/internal/deny"

// Sentinels of check 8 for errors.Is. Do not modify them.
var (
	ErrToolMismatch = &Error{Code: deny.ToolMismatch}
	ErrArgsMismatch = &Error{Code: deny.ArgsMismatch}
)

// Bind runs hard check 8 of DESIGN §4: whether the token allows the call of
// tool whose arguments hash to argsSHA256 (lowercase hex SHA-256 of their
// RFC 8785 form). It returns nil when it does, else an [*Error] whose Code
// is, in this order:
//
//   - [deny.ToolMismatch]: an approval of another tool, or a grant none of
//     whose m1.tools patterns matches tool (see [Claims.MatchesTool]);
//   - [deny.ArgsMismatch]: an approval whose m1.args_sha256 is not
//     argsSHA256. A grant allows any arguments.
//
// This is the one implementation of check 8: the sidecar, the
// orchestrator and m1 token inspect call it. Bind reads c only.
func (c *Claims) Bind(tool, argsSHA256 string) error {
	switch {
	case !c.MatchesTool(tool):
		return &Error{Code: deny.ToolMismatch, Reason: "token does not allow tool " + tool}
	case c.Kind == KindApproval && c.ArgsSHA256 != argsSHA256:
		return &Error{Code: deny.ArgsMismatch, Reason: "arguments differ from the approved arguments (args_sha256 " + argsSHA256 + ")"}
	}
	return nil
}
