package approval

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/m1-agent/m1/toolcall"
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

// wireClaims is the payload as decoded for check 2. Each member type
// records whether the member was present and fails unless it has the right
// JSON type (null included), so that presence and type are checked in one
// pass without intermediate allocations.
type wireClaims struct {
	Iss jsonString  `json:"iss"`
	Sub jsonString  `json:"sub"`
	Aud jsonStrings `json:"aud"` // a string or an array of strings
	Iat jsonNumber  `json:"iat"`
	Nbf jsonNumber  `json:"nbf"`
	Exp jsonNumber  `json:"exp"`
	Jti jsonString  `json:"jti"`
	Act jsonActor   `json:"act"`
	M1  *wireM1     `json:"m1"`
}

type wireM1 struct {
	Kind       jsonString  `json:"kind"`
	Tool       jsonString  `json:"tool"`
	ArgsSHA256 jsonString  `json:"args_sha256"`
	Tools      jsonStrings `json:"tools"` // an array of strings
	MaxUses    jsonNumber  `json:"max_uses"`
	RunID      jsonString  `json:"run_id"`
	ProposalID jsonString  `json:"proposal_id"`
}

// jsonString is a member that must be a JSON string when present.
type jsonString struct {
	set bool
	v   string
}

func (s *jsonString) UnmarshalJSONFrom(d *jsontext.Decoder) error {
	tok, err := d.ReadToken()
	if err != nil {
		return err
	}
	if tok.Kind() != '"' {
		return fmt.Errorf("want a string, got %v", tok.Kind())
	}
	s.set, s.v = true, tok.String()
	return nil
}

// jsonNumber is a member that must be a JSON number when present.
type jsonNumber struct {
	set bool
	v   float64
}

func (n *jsonNumber) UnmarshalJSONFrom(d *jsontext.Decoder) error {
	tok, err := d.ReadToken()
	if err != nil {
		return err
	}
	if tok.Kind() != '0' {
		return fmt.Errorf("want a number, got %v", tok.Kind())
	}
	v, err := tok.Float()
	if err != nil || math.IsInf(v, 0) {
		return errors.New("number out of range")
	}
	n.set, n.v = true, v
	return nil
}

// jsonStrings is a member that must be an array of strings, or (if
// single) a string, when present.
type jsonStrings struct {
	set    bool
	single bool // it was a string
	v      []string
}

func (ss *jsonStrings) UnmarshalJSONFrom(d *jsontext.Decoder) error {
	tok, err := d.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case '"':
		ss.set, ss.single, ss.v = true, true, []string{tok.String()}
		return nil
	case '[':
	default:
		return fmt.Errorf("want an array of strings, got %v", tok.Kind())
	}
	ss.set, ss.v = true, []string{}
	for d.PeekKind() != ']' {
		if tok, err = d.ReadToken(); err != nil {
			return err
		}
		if tok.Kind() != '"' {
			return fmt.Errorf("want an array of strings, got an element %v", tok.Kind())
		}
		ss.v = append(ss.v, tok.String())
	}
	_, err = d.ReadToken() // ]
	return err
}

// jsonActor is the act member: when present, an object with a string sub.
type jsonActor struct {
	set bool
	sub jsonString
}

func (a *jsonActor) UnmarshalJSONFrom(d *jsontext.Decoder) error {
	if k := d.PeekKind(); k != '{' {
		return fmt.Errorf("want an object, got %v", k)
	}
	var act struct {
		Sub jsonString `json:"sub"`
	}
	if err := json.UnmarshalDecode(d, &act); err != nil {
		return err
	}
	a.set, a.sub = true, act.Sub
	return nil
}

// Limits on numeric claims: NumericDates must lie in [0, 9999-12-31T23:59:59Z]
// (later ones would overflow time arithmetic); max_uses must be an integer
// a float64 represents exactly.
const (
	maxNumericDate = 253402300799
	maxMaxUses     = 1 << 53
)

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
	for _, f := range []struct {
		name string
		v    jsonString
		dst  *string
	}{{"iss", w.Iss, &c.Issuer}, {"sub", w.Sub, &c.Subject}, {"jti", w.Jti, &c.ID}} {
		if f.v.v == "" {
			return nil, invalid("missing " + f.name)
		}
		*f.dst = f.v.v
	}
	if !w.Aud.set {
		return nil, invalid("missing aud")
	}
	if len(w.Aud.v) == 0 || slices.Contains(w.Aud.v, "") {
		return nil, invalid("aud must be a non-empty string or array of non-empty strings")
	}
	c.Audience = w.Aud.v
	for _, t := range []struct {
		name string
		v    jsonNumber
		dst  *time.Time
	}{{"iat", w.Iat, &c.IssuedAt}, {"nbf", w.Nbf, &c.NotBefore}, {"exp", w.Exp, &c.Expiry}} {
		if !t.v.set {
			return nil, invalid("missing " + t.name)
		}
		if t.v.v < 0 || t.v.v > maxNumericDate {
			return nil, invalid(t.name + " out of range")
		}
		sec, frac := math.Modf(t.v.v)
		*t.dst = time.Unix(int64(sec), int64(frac*1e9)).UTC()
	}
	if w.Act.set {
		if w.Act.sub.v == "" {
			return nil, invalid("act must be an object with a string sub")
		}
		c.Actor = w.Act.sub.v
	}
	if w.M1 == nil {
		return nil, invalid("missing m1")
	}
	if err := parseM1(w.M1, c); err != nil {
		return nil, err
	}
	return c, nil
}

func parseM1(m *wireM1, c *Claims) *Error {
	if !m.Kind.set {
		return invalid("missing m1.kind")
	}
	c.Kind, c.RunID, c.ProposalID = m.Kind.v, m.RunID.v, m.ProposalID.v
	switch c.Kind {
	case KindApproval:
		switch {
		case m.Tools.set || m.MaxUses.set:
			return invalid("an approval must not carry m1.tools or m1.max_uses")
		case !toolcall.ValidName(m.Tool.v):
			return invalid("m1.tool must match [A-Za-z0-9_.-]{1,128}")
		case !validSHA256Hex(m.ArgsSHA256.v):
			return invalid("m1.args_sha256 must be 64 lowercase hex digits")
		}
		c.Tool, c.ArgsSHA256 = m.Tool.v, m.ArgsSHA256.v
	case KindGrant:
		switch {
		case m.Tool.set || m.ArgsSHA256.set:
			return invalid("a grant must not carry m1.tool or m1.args_sha256")
		case m.Tools.single || len(m.Tools.v) == 0:
			return invalid("m1.tools must be a non-empty array of tool patterns")
		}
		for _, p := range m.Tools.v {
			if !validToolPattern(p) {
				return invalid(fmt.Sprintf("m1.tools: invalid pattern %q (an exact name or prefix* with a non-empty prefix)", clip(p)))
			}
		}
		if n := m.MaxUses.v; !m.MaxUses.set || n < 1 || n > maxMaxUses || n != math.Trunc(n) {
			return invalid("m1.max_uses must be an integer ≥ 1")
		}
		c.Tools, c.MaxUses = m.Tools.v, int(m.MaxUses.v)
	default:
		return invalid(fmt.Sprintf("m1.kind must be %q or %q", KindApproval, KindGrant))
	}
	return nil
}

// validToolPattern reports whether p is a tool name or a tool name followed
// by a single '*'. A bare "*" is not a pattern.
func validToolPattern(p string) bool {
	prefix, _ := strings.CutSuffix(p, "*")
	return toolcall.ValidName(prefix)
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
