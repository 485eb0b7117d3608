package authz

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/toolcall"
)

// TokenVerifier runs hard checks 1–7 on an approval token.
type TokenVerifier interface {
	Verify(token string) (*approval.Claims, error)
}

// UseStore records the use of an approval or a grant (DESIGN §4 check 11):
// Use counts one use of u.JTI if fewer than u.MaxUses were counted, and
// reports whether it did, atomically. Fencing against data loss (DESIGN §7)
// is the implementation's job, always: a store whose backend can lose data
// refuses, atomically with the use, a token issued before its epoch, with
// an error wrapping state.ErrStateReset (state_reset, 403). Any other error
// denies with state_unavailable (503). Records may be dropped after u.Exp.
type UseStore interface {
	Use(ctx context.Context, u state.Use) (bool, error)
}

// RevocationChecker answers hard check 9.
type RevocationChecker interface {
	Revoked(ctx context.Context, jti, sub string) (bool, error)
}

// Epoch reports the start of the current state epoch (DESIGN §7): a token
// issued before it is refused with state_reset at check 9, on every kind of
// request, before the policy runs. It is an early answer only: the
// UseStore refuses such a token again, atomically with the use, whether or
// not Options.Epoch is set. The zero time means no epoch.
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
			// The body's error names the code: the reason says only why.
			reason := ae.Reason
			if reason == "" {
				e, _ := deny.Lookup(ae.Code)
				reason = e.Meaning
			}
			return fail(ae.Code, reason)
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
	u := state.Use{JTI: c.ID, IssuedAt: c.IssuedAt, Exp: c.Expiry.Add(s.opts.ClockSkew), MaxUses: 1}
	code := deny.TokenReplayed
	if c.Kind == approval.KindGrant {
		u.MaxUses, code = c.MaxUses, deny.GrantExhausted
	}
	ok, err := s.opts.Uses.Use(ctx, u)
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
