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

import "github.com/m1-agent/m1/internal/deny"

// Token kinds (the m1.kind claim) and the JWS header typ.
const (
	KindApproval = "approval" // exactly one call: m1.tool + m1.args_sha256
	KindGrant    = "grant"    // pre-authorization: m1.tools patterns + m1.max_uses
	TokenType    = "m1-approval+jwt"
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
	ErrInvalid     = &Error{Code: deny.TokenInvalid}
	ErrExpired     = &Error{Code: deny.TokenExpired}
	ErrNotYetValid = &Error{Code: deny.TokenNotYetValid}
	ErrTTLExceeded = &Error{Code: deny.TokenTTLExceeded}
	ErrAudience    = &Error{Code: deny.AudienceMismatch}
	ErrIssuer      = &Error{Code: deny.IssuerUntrusted}
)

func invalid(reason string) *Error { return &Error{Code: deny.TokenInvalid, Reason: reason} }
