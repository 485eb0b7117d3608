package approval

import (
	"crypto/sha256"
	"fmt"
	"math"
	"strings"
	"time"

	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Claims are a verified token's claims.
//
// A *Claims returned by [Verifier.Verify] is shared between callers (it may
// come from the verified-token cache): treat it, its slices and Raw as
// read-only.
type Claims struct {
	Issuer, Subject, ID, Actor  string // Actor is act.sub ("" if the token has no act)
	Audience                    []string
	IssuedAt, NotBefore, Expiry time.Time

	Kind             string   // KindApproval or KindGrant
	Tool, ArgsSHA256 string   // approval: the one call it allows
	Tools            []string // grant: exact tool names or "prefix*" (non-empty prefix)
	MaxUses          int      // grant: ≥ 1

	RunID, ProposalID string // links to the orchestrator's records ("" if absent)

	// Raw is the payload JSON exactly as signed; input.m1.token is built from it.
	Raw []byte
	// PayloadSHA256 is the SHA-256 of Raw, for decision-cache keys.
	PayloadSHA256 [32]byte
}

// MatchesTool reports whether the token allows calling tool: for a grant,
// whether one of its patterns matches (an exact name, or "prefix*" matching
// every name that starts with prefix); for an approval, whether tool is the
// approved tool. Argument binding is not checked here.
func (c *Claims) MatchesTool(tool string) bool {
	switch c.Kind {
	case KindApproval:
		return tool != "" && tool == c.Tool
	case KindGrant:
		for _, p := range c.Tools {
			if prefix, ok := strings.CutSuffix(p, "*"); ok {
				if prefix != "" && strings.HasPrefix(tool, prefix) {
					return true
				}
			} else if p == tool {
				return true
			}
		}
	}
	return false
}

// wireClaims is the payload as decoded for check 2. Required members are
// pointers (absent or null → nil); members whose JSON type must be checked
// even when present as null are raw values.
type wireClaims struct {
	Iss *string        `json:"iss"`
	Sub *string        `json:"sub"`
	Aud jsontext.Value `json:"aud"`
	Iat *float64       `json:"iat"`
	Nbf *float64       `json:"nbf"`
	Exp *float64       `json:"exp"`
	Jti *string        `json:"jti"`
	Act jsontext.Value `json:"act"`
	M1  *wireM1        `json:"m1"`
}

type wireM1 struct {
	Kind       *string        `json:"kind"`
	Tool       jsontext.Value `json:"tool"`
	ArgsSHA256 jsontext.Value `json:"args_sha256"`
	Tools      jsontext.Value `json:"tools"`
	MaxUses    jsontext.Value `json:"max_uses"`
	RunID      jsontext.Value `json:"run_id"`
	ProposalID jsontext.Value `json:"proposal_id"`
}

// maxNumericDate is 9999-12-31T23:59:59Z: later or negative NumericDates are
// malformed (and would overflow time arithmetic).
const maxNumericDate = 253402300799

// parseClaims runs the claim half of hard check 2 on a verified payload. The
// JSON must be a single object with case-sensitive, unique member names and
// valid UTF-8 (go-json-experiment/json's defaults), so that what Go checks is
// exactly what a policy reading Raw sees. Unknown members are allowed.
func parseClaims(payload []byte) (*Claims, *Error) {
	var w wireClaims
	if err := json.Unmarshal(payload, &w); err != nil {
		return nil, invalid("payload: " + err.Error())
	}
	c := &Claims{Raw: payload, PayloadSHA256: sha256.Sum256(payload)}
	var err *Error
	str := func(name string, p *string, dst *string) {
		if err != nil {
			return
		}
		if p == nil || *p == "" {
			err = invalid("missing " + name)
			return
		}
		*dst = *p
	}
	str("iss", w.Iss, &c.Issuer)
	str("sub", w.Sub, &c.Subject)
	str("jti", w.Jti, &c.ID)
	if err != nil {
		return nil, err
	}
	if c.Audience, err = parseAudience(w.Aud); err != nil {
		return nil, err
	}
	for _, t := range []struct {
		name string
		v    *float64
		dst  *time.Time
	}{{"iat", w.Iat, &c.IssuedAt}, {"nbf", w.Nbf, &c.NotBefore}, {"exp", w.Exp, &c.Expiry}} {
		if t.v == nil {
			return nil, invalid("missing " + t.name)
		}
		if *t.v < 0 || *t.v > maxNumericDate {
			return nil, invalid(t.name + " out of range")
		}
		sec, frac := math.Modf(*t.v)
		*t.dst = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	}
	if len(w.Act) > 0 {
		var act struct {
			Sub *string `json:"sub"`
		}
		if w.Act.Kind() != '{' || json.Unmarshal(w.Act, &act) != nil || act.Sub == nil || *act.Sub == "" {
			return nil, invalid("act must be an object with a string sub")
		}
		c.Actor = *act.Sub
	}
	if w.M1 == nil {
		return nil, invalid("missing m1")
	}
	if err := parseM1(w.M1, c); err != nil {
		return nil, err
	}
	return c, nil
}

func parseAudience(v jsontext.Value) ([]string, *Error) {
	switch v.Kind() {
	case '"':
		var s string
		if json.Unmarshal(v, &s) == nil && s != "" {
			return []string{s}, nil
		}
	case '[':
		var ss []string
		if json.Unmarshal(v, &ss) == nil && len(ss) > 0 && !containsEmpty(ss) {
			return ss, nil
		}
	case 0:
		return nil, invalid("missing aud")
	}
	return nil, invalid("aud must be a non-empty string or array of non-empty strings")
}

func parseM1(m *wireM1, c *Claims) *Error {
	if m.Kind == nil {
		return invalid("missing m1.kind")
	}
	c.Kind = *m.Kind
	var err *Error
	optString := func(name string, v jsontext.Value, dst *string) {
		if err != nil || len(v) == 0 {
			return
		}
		if v.Kind() != '"' || json.Unmarshal(v, dst) != nil {
			err = invalid(name + " must be a string")
		}
	}
	optString("m1.run_id", m.RunID, &c.RunID)
	optString("m1.proposal_id", m.ProposalID, &c.ProposalID)
	if err != nil {
		return err
	}
	switch c.Kind {
	case KindApproval:
		if len(m.Tools) > 0 || len(m.MaxUses) > 0 {
			return invalid("an approval must not carry m1.tools or m1.max_uses")
		}
		optString("m1.tool", m.Tool, &c.Tool)
		optString("m1.args_sha256", m.ArgsSHA256, &c.ArgsSHA256)
		switch {
		case err != nil:
			return err
		case !validToolName(c.Tool):
			return invalid("m1.tool must match [A-Za-z0-9_.-]{1,128}")
		case !validSHA256Hex(c.ArgsSHA256):
			return invalid("m1.args_sha256 must be 64 lowercase hex digits")
		}
	case KindGrant:
		if len(m.Tool) > 0 || len(m.ArgsSHA256) > 0 {
			return invalid("a grant must not carry m1.tool or m1.args_sha256")
		}
		if m.Tools.Kind() != '[' || json.Unmarshal(m.Tools, &c.Tools) != nil || len(c.Tools) == 0 {
			return invalid("m1.tools must be a non-empty array of tool patterns")
		}
		for _, p := range c.Tools {
			if !validToolPattern(p) {
				return invalid(fmt.Sprintf("m1.tools: invalid pattern %q (an exact name or prefix* with a non-empty prefix)", clip(p)))
			}
		}
		if m.MaxUses.Kind() != '0' || json.Unmarshal(m.MaxUses, &c.MaxUses) != nil || c.MaxUses < 1 {
			return invalid("m1.max_uses must be an integer ≥ 1")
		}
	default:
		return invalid(fmt.Sprintf("m1.kind must be %q or %q", KindApproval, KindGrant))
	}
	return nil
}

func containsEmpty(ss []string) bool {
	for _, s := range ss {
		if s == "" {
			return true
		}
	}
	return false
}

// validToolName reports whether s matches [A-Za-z0-9_.-]{1,128}.
func validToolName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '_', b == '.', b == '-':
		default:
			return false
		}
	}
	return true
}

// validToolPattern reports whether p is a tool name or a tool name followed
// by a single '*'. A bare "*" is not a pattern.
func validToolPattern(p string) bool {
	prefix, _ := strings.CutSuffix(p, "*")
	return validToolName(prefix)
}

func validSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; !('0' <= b && b <= '9' || 'a' <= b && b <= 'f') {
			return false
		}
	}
	return true
}
