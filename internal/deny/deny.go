// Package deny is the one table of M1's deny codes (DESIGN §3, §4, §7,
// §10): each stable code with the HTTP status it is answered with and what
// it means in one line. Every deny the sidecar writes takes its code and
// status from here; so do the metrics label m1_policy_checks_total{reason},
// the audit trail's reason column, the orchestrator's reading of a deny, the
// CLI's display, and the table in docs/DENY-CODES.md (a test keeps it in
// step).
//
// The codes are untyped string constants: they travel as strings in JSON
// bodies, metric labels and store columns.
package deny

// The deny codes, in the order of the table.
const (
	// The request, before any token or policy (DESIGN §3).
	BodyTooLarge         = "body_too_large"
	BadRequest           = "bad_request"
	NumberNotCanonical   = "number_not_canonical"
	UnsupportedMediaType = "unsupported_media_type"
	BadPath              = "bad_path"
	HeaderMismatch       = "header_mismatch"

	// The approval token's hard checks 1–9 and 11 (DESIGN §4).
	TokenInvalid     = "token_invalid"
	TokenExpired     = "token_expired"
	TokenNotYetValid = "token_not_yet_valid"
	TokenTTLExceeded = "token_ttl_exceeded"
	AudienceMismatch = "audience_mismatch"
	IssuerUntrusted  = "issuer_untrusted"
	ToolMismatch     = "tool_mismatch"
	ArgsMismatch     = "args_mismatch"
	TokenRevoked     = "token_revoked"
	TokenReplayed    = "token_replayed"
	GrantExhausted   = "grant_exhausted"
	StateReset       = "state_reset"
	StateUnavailable = "state_unavailable"

	// Limits, the policy, and the pipeline itself.
	RateLimited   = "rate_limited"
	PolicyDenied  = "policy_denied"
	PolicyError   = "policy_error"
	InternalError = "internal_error"

	// Approvals held at the gateway (DESIGN §10).
	ApprovalPending  = "approval_pending"
	ApprovalRejected = "approval_rejected"
)

// Entry is one row of the table.
type Entry struct {
	Code    string
	Status  int    // the HTTP status of the deny
	Meaning string // one line, for people
}

var table = []Entry{
	{BodyTooLarge, 413, "the body is partial, larger than M1_MAX_BODY_BYTES, or shorter than its content-length says"},
	{BadRequest, 400, "the body cannot be read exactly one way: not JSON, a batch, duplicate or case-folded duplicate names, a name or JSON-RPC method holding NUL, too deep, bad framing"},
	{NumberNotCanonical, 400, "a number does not survive a round trip through an IEEE-754 double, so RFC 8785 would hash two values alike"},
	{UnsupportedMediaType, 415, "the content-type is not JSON: a tool choosing its parser by media type would read other arguments"},
	{BadPath, 400, "the path has an empty, . or .. segment, a tool name outside [A-Za-z0-9_.-]{1,128}, or a query on a tool path"},
	{HeaderMismatch, 400, "an MCP routing header (mcp-method, mcp-name) disagrees with the body, or comes with a GET or DELETE of the MCP path"},
	{TokenInvalid, 401, "the approval token does not decode, its key or signature is wrong, or a claim is missing or malformed"},
	{TokenExpired, 401, "the approval token's exp has passed (with M1_CLOCK_SKEW leeway)"},
	{TokenNotYetValid, 401, "the approval token's nbf or iat lies in the future"},
	{TokenTTLExceeded, 401, "the approval token lives longer than M1_APPROVAL_TOKEN_TTL_MINUTES"},
	{AudienceMismatch, 401, "the approval token's aud does not name this sidecar's M1_AUDIENCE"},
	{IssuerUntrusted, 401, "the approval token's iss is not in M1_TRUSTED_ISSUERS"},
	{ToolMismatch, 403, "the token approves another tool, or no pattern of the grant matches this one"},
	{ArgsMismatch, 403, "the approval is for other arguments (args_sha256 differs)"},
	{TokenRevoked, 403, "the token's jti or its subject is revoked"},
	{TokenReplayed, 403, "the single-use approval was used already"},
	{GrantExhausted, 403, "the grant has been used m1.max_uses times"},
	{StateReset, 403, "the token was issued before the shared state's new epoch; retry-after says when a new approval is accepted"},
	{StateUnavailable, 503, "the state that single use, use counts or revocations need cannot be reached; nothing was allowed"},
	{RateLimited, 429, "the principal made too many tool calls (RATE_LIMIT_REQUESTS_PER_*); retry-after says when"},
	{PolicyDenied, 403, "the policy denied the call; reason is the policy's, the status its http_status when it gives one"},
	{PolicyError, 403, "the policy failed, timed out or gave no decision; the operator's log has the details"},
	{InternalError, 500, "the sidecar failed while deciding; the call is denied"},
	{ApprovalPending, 403, "the call waits for a person's approval (a proposal was filed); retry it after retry-after"},
	{ApprovalRejected, 403, "an operator rejected this call's proposal; reason says why"},
}

var byCode = func() map[string]Entry {
	m := make(map[string]Entry, len(table))
	for _, e := range table {
		m[e.Code] = e
	}
	return m
}()

// All returns the table, in order. Callers must not modify it.
func All() []Entry { return table }

// Lookup returns code's entry and whether code is in the table.
func Lookup(code string) (Entry, bool) {
	e, ok := byCode[code]
	return e, ok
}

// Status is the HTTP status of code, 500 for a code not in the table (a
// bug: every deny takes its code from here).
func Status(code string) int {
	if e, ok := byCode[code]; ok {
		return e.Status
	}
	return 500
}
