// Package approval verifies and mints M1 approval tokens: JWS compact JWTs
// (header typ "m1-approval+jwt") by which an operator approves exactly one
// tool call (kind "approval") or pre-authorizes a bounded number of calls
// (kind "grant"). DESIGN §4 is the contract.
//
// The sidecar side is [Verifier], which runs hard checks 1–7 of DESIGN §4 in
// order and reports the first failure as an [*Error] with a stable code, with
// [KeySet] (public keys from a JWKS file, optionally an HS256 secret) and
// [Watcher] (reloads the JWKS file on change or on demand). The operator side
// is [SigningKey], [GenerateKey], [Mint] and [Inspect].
//
// Binding to the call (check 8) is [Claims.Bind], the one implementation
// of it. Revocation (9) and single use (11) are the decision path's job;
// this package hands it verified [Claims].
package approval

// Token kinds (the m1.kind claim) and the JWS header typ.
const (
	KindApproval = "approval" // exactly one call: m1.tool + m1.args_sha256
	KindGrant    = "grant"    // pre-authorization: m1.tools patterns + m1.max_uses
	TokenType    = "m1-approval+jwt"
)

// Stable error codes of DESIGN §4 hard checks 1–7. Every one maps to HTTP
// 401; check 8's codes (see [Claims.Bind]) map to 403.
const (
	CodeInvalid          = "token_invalid"       // checks 1 and 2
	CodeExpired          = "token_expired"       // check 3
	CodeNotYetValid      = "token_not_yet_valid" // check 4
	CodeTTLExceeded      = "token_ttl_exceeded"  // check 5
	CodeAudienceMismatch = "audience_mismatch"   // check 6
	CodeIssuerUntrusted  = "issuer_untrusted"    // check 7
)

// Error is a verification or binding failure. Code is one of the Code
// constants and is safe to use in responses, metric labels and audit
// records; Reason is a human-readable detail for logs and never contains
// the token or a secret.
type Error struct{ Code, Reason string }

// Error returns "code: reason", or just the code when there is no reason.
func (e *Error) Error() string {
	if e.Reason == "" {
		return e.Code
	}
	return e.Code + ": " + e.Reason
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, ErrExpired) holds for every expired-token error whatever its
// Reason.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Sentinels for errors.Is, one per code. Do not modify them.
var (
	ErrInvalid     = &Error{Code: CodeInvalid}
	ErrExpired     = &Error{Code: CodeExpired}
	ErrNotYetValid = &Error{Code: CodeNotYetValid}
	ErrTTLExceeded = &Error{Code: CodeTTLExceeded}
	ErrAudience    = &Error{Code: CodeAudienceMismatch}
	ErrIssuer      = &Error{Code: CodeIssuerUntrusted}
)

func invalid(reason string) *Error { return &Error{Code: CodeInvalid, Reason: reason} }
