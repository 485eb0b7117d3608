package authz

import (
	"context"
	"errors"
	"github.com/m1-agent/m1/internal/deny"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/toolcall"
)

// TokenVerifier runs hard checks 1–7 on an approval token.
type TokenVerifier interface {
	Verify(token string) (*approval.Claims, error)
}

// UseStore records single use of approvals and counts grant uses, atomically
// (DESIGN §4 check 11). Entries may be dropped after exp.
type UseStore interface {
	Consume(ctx context.Context, jti string, exp time.Time) (first bool, err error)
	CountUse(ctx context.Context, jti string, max int, exp time.Time) (ok bool, err error)
}

// IssuedUseStore is a UseStore that also refuses, atomically with the use,
// a token issued before the shared-state epoch (error wrapping
// state.ErrStateReset): checking Epoch() first and using second would race
// with an epoch change in between.
type IssuedUseStore interface {
	ConsumeIssued(ctx context.Context, jti string, iat, exp time.Time) (bool, error)
	CountUseIssued(ctx context.Context, jti string, iat time.Time, max int, exp time.Time) (bool, error)
}

// RevocationChecker answers hard check 9.
type RevocationChecker interface {
	Revoked(ctx context.Context, jti, sub string) (bool, error)
}

// Epoch reports the start of the current shared-state epoch (DESIGN §7):
// tokens issued before it are refused with state_reset. The zero time means
// no fencing (in-process state).
type Epoch interface {
	Epoch() time.Time
}

// checkToken runs hard checks 1–9 for a presented token and fills v on
// success; it returns false after filling the deny.
func (s *Service) checkToken(ctx context.Context, raw string, v *verdict) bool {
	fail := func(code, reason string) bool {
		v.refuse(code, reason)
		v.tokenResult = code
		return false
	}
	if s.opts.Tokens == nil {
		return fail(deny.TokenInvalid, "no approval keys are configured on this sidecar")
	}
	c, err := s.opts.Tokens.Verify(raw)
	if err != nil {
		var ae *approval.Error
		if errors.As(err, &ae) {
			return fail(ae.Code, ae.Error())
		}
		return fail(deny.TokenInvalid, err.Error())
	}
	v.claims = c
	if v.call.Kind == toolcall.KindToolCall {
		if err := c.Bind(v.call.Tool, v.call.ArgsSHA256); err != nil {
			ae, _ := errors.AsType[*approval.Error](err)
			return fail(ae.Code, ae.Reason)
		}
	}
	revoked, err := s.opts.Revocations.Revoked(ctx, c.ID, c.Subject)
	switch {
	case err != nil:
		return fail(deny.StateUnavailable, "revocation state unavailable: "+err.Error())
	case revoked:
		return fail(deny.TokenRevoked, "token or subject revoked")
	}
	if s.opts.Epoch != nil {
		if epoch := s.opts.Epoch.Epoch(); !epoch.IsZero() && c.IssuedAt.Before(epoch) {
			v.retryAfter = s.resetRetryAfter()
			return fail(deny.StateReset, "token issued before the shared state was reset; ask for a new approval")
		}
	}
	v.principal, v.runID, v.tokenResult = c.Subject, c.RunID, codeOK
	return true
}

// consume runs hard check 11 on an allowed tool call: the approval's jti is
// used up, or the grant's use counted. It returns false after filling the
// deny. Records last until the token could no longer verify.
func (s *Service) consume(ctx context.Context, v *verdict) bool {
	c := v.claims
	until := c.Expiry.Add(s.opts.ClockSkew)
	var (
		ok   bool
		err  error
		code = deny.TokenReplayed
	)
	issued, fenced := s.opts.Uses.(IssuedUseStore)
	switch {
	case c.Kind == approval.KindGrant && fenced:
		ok, err = issued.CountUseIssued(ctx, c.ID, c.IssuedAt, c.MaxUses, until)
	case c.Kind == approval.KindGrant:
		ok, err = s.opts.Uses.CountUse(ctx, c.ID, c.MaxUses, until)
	case fenced:
		ok, err = issued.ConsumeIssued(ctx, c.ID, c.IssuedAt, until)
	default:
		ok, err = s.opts.Uses.Consume(ctx, c.ID, until)
	}
	if c.Kind == approval.KindGrant {
		code = deny.GrantExhausted
	}
	switch {
	case errors.Is(err, state.ErrStateReset):
		v.refuse(deny.StateReset, "token issued before the shared state was reset; ask for a new approval")
		v.retryAfter = s.resetRetryAfter()
	case err != nil:
		v.refuse(deny.StateUnavailable, "single-use state unavailable: "+err.Error())
	case !ok && code == deny.GrantExhausted:
		v.refuse(code, "grant used "+itoa(c.MaxUses)+" times already")
	case !ok:
		v.refuse(code, "approval already used")
	default:
		return true
	}
	v.tokenResult = v.code
	return false
}

// resetRetryAfter is the retry-after of a state_reset deny: the time until
// an approval issued then is accepted (the epoch may lie ahead by the clock
// skew), at least one second.
func (s *Service) resetRetryAfter() time.Duration {
	var wait time.Duration
	if s.opts.Epoch != nil {
		wait = s.opts.Epoch.Epoch().Sub(s.opts.Now())
	}
	return max((wait + time.Second - 1).Truncate(time.Second), time.Second)
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return string(b[i:])
}

// tokenFromHeader strips an optional "Bearer " prefix.
func tokenFromHeader(h string) string {
	if t, ok := strings.CutPrefix(h, "Bearer "); ok {
		return t
	}
	return h
}
