package approval

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/deny"
)

var sentinelFor = map[string]error{
	deny.TokenInvalid:     ErrInvalid,
	deny.TokenExpired:     ErrExpired,
	deny.TokenNotYetValid: ErrNotYetValid,
	deny.TokenTTLExceeded: ErrTTLExceeded,
	deny.AudienceMismatch: ErrAudience,
	deny.IssuerUntrusted:  ErrIssuer,
}

// The verifiers' clock reads now; approvalClaims are issued at t0 = now-1m,
// expire at t0+5m; leeway is the default 30s; MaxTTL the default 5m.
var now = t0.Add(time.Minute)

func TestVerifyHardChecks(t *testing.T) {
	k := keys()
	edPub := []byte(k.byAlg[AlgEdDSA].Key.Public().(ed25519.PublicKey))
	rsaDER, err := x509.MarshalPKIXPublicKey(k.byAlg[AlgRS256].Key.Public().(*rsa.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})
	noSecret := func(o *VerifierOptions) {
		ks, err := ParseJWKS(k.jwks)
		if err != nil {
			t.Fatal(err)
		}
		o.Keys = ks
	}
	valid := mintWith(t, AlgEdDSA, nil)
	parts := strings.Split(valid, ".")
	hdr, pay, sig := parts[0], parts[1], parts[2]
	payload := func(edit func(p map[string]any)) string {
		p := basePayload()
		edit(p)
		return signPayload(t, p)
	}
	// times sets iat, nbf and exp relative to the verifiers' now.
	times := func(iat, nbf, exp time.Duration) func(*Claims) {
		return func(c *Claims) { c.IssuedAt, c.NotBefore, c.Expiry = now.Add(iat), now.Add(nbf), now.Add(exp) }
	}
	expired := times(-10*time.Minute, -10*time.Minute, -6*time.Minute)
	grant := func(m1 map[string]any) string {
		p := basePayload()
		p["m1"] = m1
		return signPayload(t, p)
	}

	tests := []struct {
		name  string
		token string
		opts  func(*VerifierOptions)
		want  string // a code, or "" for ok
	}{
		// Every algorithm, and accepted variants.
		{name: "EdDSA", token: valid},
		{name: "ES256", token: mintWith(t, AlgES256, nil)},
		{name: "RS256", token: mintWith(t, AlgRS256, nil)},
		{name: "HS256 without kid", token: mintWith(t, AlgHS256, nil)},
		{name: "Bearer prefix", token: "Bearer " + valid},
		{name: "grant", token: mint(t, k.byAlg[AlgEdDSA], grantClaims())},
		{name: "typ application/m1-approval+jwt", token: signHeader(t, `{"alg":"EdDSA","kid":"ed","typ":"application/m1-approval+jwt"}`)},
		{name: "typ M1-Approval+JWT", token: signHeader(t, `{"alg":"EdDSA","kid":"ed","typ":"M1-Approval+JWT"}`)},
		{name: "aud as string", token: payload(func(p map[string]any) { p["aud"] = testAud })},
		{name: "aud array containing ours", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Audience = []string{"other", testAud} })},
		{name: "no act", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Actor = "" })},
		{name: "unknown claims ignored", token: payload(func(p map[string]any) { p["extra"] = 1; m1Of(p)["note"] = "x" })},
		{name: "fractional NumericDate", token: payload(func(p map[string]any) { p["exp"] = float64(t0.Unix()) + 299.5 })},

		// 1: decode, key, alg pin, signature.
		{name: "empty", token: "", want: deny.TokenInvalid},
		{name: "garbage", token: "not a token", want: deny.TokenInvalid},
		{name: "two segments", token: hdr + "." + pay, want: deny.TokenInvalid},
		{name: "extra segments", token: valid + ".e30", want: deny.TokenInvalid},
		{name: "bad base64", token: hdr + "." + pay + "!." + sig, want: deny.TokenInvalid},
		{name: "header of 4n+1 base64 bytes", token: hdr + "A." + pay + "." + sig, want: deny.TokenInvalid},
		{name: "padded base64", token: valid + "==", want: deny.TokenInvalid},
		{name: "non-canonical base64 signature", token: valid[:len(valid)-1] + string(valid[len(valid)-1]^1), want: deny.TokenInvalid},
		{name: "newline in signature", token: valid[:len(valid)-4] + "\n" + valid[len(valid)-4:], want: deny.TokenInvalid},
		{name: "too long", token: valid + strings.Repeat("A", MaxTokenLen), want: deny.TokenInvalid},
		{name: "alg none", token: b64([]byte(`{"alg":"none","kid":"ed","typ":"m1-approval+jwt"}`)) + "." + pay + ".", want: deny.TokenInvalid},
		{name: "alg none without kid", token: b64([]byte(`{"alg":"none","typ":"m1-approval+jwt"}`)) + "." + pay + ".", want: deny.TokenInvalid},
		{name: "alg missing", token: b64([]byte(`{"kid":"ed","typ":"m1-approval+jwt"}`)) + "." + pay + "." + sig, want: deny.TokenInvalid},
		{name: "HS256 signed with Ed25519 public key, its kid", token: signRaw(t, AlgHS256, edPub, []byte(`{"alg":"HS256","kid":"ed","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "HS256 signed with RSA public PEM, its kid", token: signRaw(t, AlgHS256, rsaPEM, []byte(`{"alg":"HS256","kid":"rsa","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "HS256 signed with RSA public PEM, no kid", token: signRaw(t, AlgHS256, rsaPEM, []byte(`{"alg":"HS256","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "HS256 signed with RSA public PEM, no kid, no secret", token: signRaw(t, AlgHS256, rsaPEM, []byte(`{"alg":"HS256","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), opts: noSecret, want: deny.TokenInvalid},
		{name: "ES256 header on EdDSA kid", token: signRaw(t, AlgES256, k.byAlg[AlgES256].Key, []byte(`{"alg":"ES256","kid":"ed","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "EdDSA header on ES256 kid", token: signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ec","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "RS256 header on HS256 secret", token: signRaw(t, AlgRS256, k.byAlg[AlgRS256].Key, []byte(`{"alg":"RS256","typ":"m1-approval+jwt"}`), mustJSON(basePayload())), want: deny.TokenInvalid},
		{name: "unknown kid", token: mint(t, k.ed2, approvalClaims()), want: deny.TokenInvalid},
		{name: "missing kid", token: signHeader(t, `{"alg":"EdDSA","typ":"m1-approval+jwt"}`), want: deny.TokenInvalid},
		{name: "missing kid without secret", token: mintWith(t, AlgHS256, nil), opts: noSecret, want: deny.TokenInvalid},
		{name: "kid not a string", token: signHeader(t, `{"alg":"EdDSA","kid":7,"typ":"m1-approval+jwt"}`), want: deny.TokenInvalid},
		{name: "crit header", token: signHeader(t, `{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt","crit":["exp"],"exp":1}`), want: deny.TokenInvalid},
		{name: "tampered payload", token: hdr + "." + b64(mustJSON(func() map[string]any { p := basePayload(); p["sub"] = "mallory"; return p }())) + "." + sig, want: deny.TokenInvalid},
		{name: "tampered header", token: b64([]byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt","x":1}`)) + "." + pay + "." + sig, want: deny.TokenInvalid},
		{name: "tampered signature", token: hdr + "." + pay + "." + strings.Repeat("A", len(sig)), want: deny.TokenInvalid},
		{name: "signature of another token", token: hdr + "." + pay + "." + strings.SplitN(mintWith(t, AlgEdDSA, func(c *Claims) { c.ID = "other" }), ".", 3)[2], want: deny.TokenInvalid},

		// 2: typ and claims.
		{name: "wrong typ", token: signHeader(t, `{"alg":"EdDSA","kid":"ed","typ":"JWT"}`), want: deny.TokenInvalid},
		{name: "missing typ", token: signHeader(t, `{"alg":"EdDSA","kid":"ed"}`), want: deny.TokenInvalid},
		{name: "typ with other prefix", token: signHeader(t, `{"alg":"EdDSA","kid":"ed","typ":"text/m1-approval+jwt"}`), want: deny.TokenInvalid},
		{name: "payload not JSON", token: signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`), []byte(`not json`)), want: deny.TokenInvalid},
		{name: "payload an array", token: signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`), []byte(`[1]`)), want: deny.TokenInvalid},
		{name: "payload with trailing data", token: signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`), append(mustJSON(basePayload()), " {}"...)), want: deny.TokenInvalid},
		{name: "duplicate claim", token: signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`), append(mustJSON(basePayload())[:1], `"sub":"mallory",`+string(mustJSON(basePayload())[1:])...)), want: deny.TokenInvalid},
		{name: "claim name in other case", token: payload(func(p map[string]any) { p["EXP"] = p["exp"]; delete(p, "exp") }), want: deny.TokenInvalid},
		{name: "missing iss", token: payload(func(p map[string]any) { delete(p, "iss") }), want: deny.TokenInvalid},
		{name: "empty iss", token: payload(func(p map[string]any) { p["iss"] = "" }), want: deny.TokenInvalid},
		{name: "missing sub", token: payload(func(p map[string]any) { delete(p, "sub") }), want: deny.TokenInvalid},
		{name: "sub not a string", token: payload(func(p map[string]any) { p["sub"] = 7 }), want: deny.TokenInvalid},
		{name: "missing aud", token: payload(func(p map[string]any) { delete(p, "aud") }), want: deny.TokenInvalid},
		{name: "empty aud array", token: payload(func(p map[string]any) { p["aud"] = []any{} }), want: deny.TokenInvalid},
		{name: "aud number", token: payload(func(p map[string]any) { p["aud"] = 1 }), want: deny.TokenInvalid},
		{name: "aud with empty string", token: payload(func(p map[string]any) { p["aud"] = []any{testAud, ""} }), want: deny.TokenInvalid},
		{name: "missing iat", token: payload(func(p map[string]any) { delete(p, "iat") }), want: deny.TokenInvalid},
		{name: "missing nbf", token: payload(func(p map[string]any) { delete(p, "nbf") }), want: deny.TokenInvalid},
		{name: "missing exp", token: payload(func(p map[string]any) { delete(p, "exp") }), want: deny.TokenInvalid},
		{name: "exp a string", token: payload(func(p map[string]any) { p["exp"] = "1772366700" }), want: deny.TokenInvalid},
		{name: "exp null", token: payload(func(p map[string]any) { p["exp"] = nil }), want: deny.TokenInvalid},
		{name: "iat negative", token: payload(func(p map[string]any) { p["iat"] = -1 }), want: deny.TokenInvalid},
		{name: "exp beyond year 9999", token: payload(func(p map[string]any) { p["exp"] = 1e300 }), want: deny.TokenInvalid},
		{name: "missing jti", token: payload(func(p map[string]any) { delete(p, "jti") }), want: deny.TokenInvalid},
		{name: "act a string", token: payload(func(p map[string]any) { p["act"] = "alice" }), want: deny.TokenInvalid},
		{name: "act null", token: payload(func(p map[string]any) { p["act"] = nil }), want: deny.TokenInvalid},
		{name: "act without sub", token: payload(func(p map[string]any) { p["act"] = map[string]any{"iss": "x"} }), want: deny.TokenInvalid},
		{name: "missing m1", token: payload(func(p map[string]any) { delete(p, "m1") }), want: deny.TokenInvalid},
		{name: "missing kind", token: payload(func(p map[string]any) { delete(m1Of(p), "kind") }), want: deny.TokenInvalid},
		{name: "unknown kind", token: payload(func(p map[string]any) { m1Of(p)["kind"] = "tool_call" }), want: deny.TokenInvalid},
		{name: "approval without tool", token: payload(func(p map[string]any) { delete(m1Of(p), "tool") }), want: deny.TokenInvalid},
		{name: "approval with invalid tool name", token: payload(func(p map[string]any) { m1Of(p)["tool"] = "github create" }), want: deny.TokenInvalid},
		{name: "approval with tool name over 128", token: payload(func(p map[string]any) { m1Of(p)["tool"] = strings.Repeat("a", 129) }), want: deny.TokenInvalid},
		{name: "approval without args_sha256", token: payload(func(p map[string]any) { delete(m1Of(p), "args_sha256") }), want: deny.TokenInvalid},
		{name: "approval with uppercase args_sha256", token: payload(func(p map[string]any) { m1Of(p)["args_sha256"] = strings.ToUpper(testArgsHash) }), want: deny.TokenInvalid},
		{name: "approval with short args_sha256", token: payload(func(p map[string]any) { m1Of(p)["args_sha256"] = testArgsHash[:63] }), want: deny.TokenInvalid},
		{name: "approval with m1.tools", token: payload(func(p map[string]any) { m1Of(p)["tools"] = []any{"a"} }), want: deny.TokenInvalid},
		{name: "run_id a number", token: payload(func(p map[string]any) { m1Of(p)["run_id"] = 1 }), want: deny.TokenInvalid},
		{name: "proposal_id null", token: payload(func(p map[string]any) { m1Of(p)["proposal_id"] = nil }), want: deny.TokenInvalid},
		{name: "grant with bare *", token: grant(map[string]any{"kind": "grant", "tools": []any{"*"}, "max_uses": 1}), want: deny.TokenInvalid},
		{name: "grant with * inside", token: grant(map[string]any{"kind": "grant", "tools": []any{"a*b"}, "max_uses": 1}), want: deny.TokenInvalid},
		{name: "grant without max_uses", token: grant(map[string]any{"kind": "grant", "tools": []any{"a"}}), want: deny.TokenInvalid},
		{name: "grant with max_uses 0", token: grant(map[string]any{"kind": "grant", "tools": []any{"a"}, "max_uses": 0}), want: deny.TokenInvalid},
		{name: "grant with max_uses 1.5", token: grant(map[string]any{"kind": "grant", "tools": []any{"a"}, "max_uses": 1.5}), want: deny.TokenInvalid},
		{name: "grant with max_uses string", token: grant(map[string]any{"kind": "grant", "tools": []any{"a"}, "max_uses": "3"}), want: deny.TokenInvalid},
		{name: "grant without tools", token: grant(map[string]any{"kind": "grant", "max_uses": 1}), want: deny.TokenInvalid},
		{name: "grant with empty tools", token: grant(map[string]any{"kind": "grant", "tools": []any{}, "max_uses": 1}), want: deny.TokenInvalid},
		{name: "grant with m1.tool", token: grant(map[string]any{"kind": "grant", "tools": []any{"a"}, "max_uses": 1, "tool": "a"}), want: deny.TokenInvalid},

		// 3: exp with leeway (30s).
		{name: "expired", token: mintWith(t, AlgEdDSA, expired), want: deny.TokenExpired},
		{name: "expired within leeway", token: mintWith(t, AlgEdDSA, times(-2*time.Minute, -2*time.Minute, -29*time.Second)), want: ""},
		{name: "expired at leeway", token: mintWith(t, AlgEdDSA, times(-2*time.Minute, -2*time.Minute, -30*time.Second)), want: deny.TokenExpired},
		{name: "expired, zero leeway", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Expiry = now }), opts: func(o *VerifierOptions) { o.ClockSkew = -1 }, want: deny.TokenExpired},

		// 4: nbf, iat with leeway.
		{name: "nbf in the future", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.NotBefore = now.Add(31 * time.Second) }), want: deny.TokenNotYetValid},
		{name: "nbf in the future within leeway", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.NotBefore = now.Add(30 * time.Second) }), want: ""},
		{name: "iat in the future", token: mintWith(t, AlgEdDSA, times(time.Minute, 0, 2*time.Minute)), want: deny.TokenNotYetValid},
		{name: "iat in the future within leeway", token: mintWith(t, AlgEdDSA, times(30*time.Second, 0, 2*time.Minute)), want: ""},
		{name: "nbf in the future, zero leeway", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.NotBefore = now.Add(time.Second) }), opts: func(o *VerifierOptions) { o.ClockSkew = -1 }, want: deny.TokenNotYetValid},

		// 5: exp - iat ≤ MaxTTL.
		{name: "ttl over max", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Expiry = t0.Add(5*time.Minute + time.Second) }), want: deny.TokenTTLExceeded},
		{name: "ttl at max", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Expiry = t0.Add(5 * time.Minute) }), want: ""},
		{name: "ttl under a larger max", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Expiry = t0.Add(time.Hour) }), opts: func(o *VerifierOptions) { o.MaxTTL = time.Hour }, want: ""},

		// 6: aud.
		{name: "wrong aud", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Audience = []string{"other.example"} }), want: deny.AudienceMismatch},
		{name: "aud differs in case", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Audience = []string{strings.ToUpper(testAud)} }), want: deny.AudienceMismatch},

		// 7: iss.
		{name: "untrusted issuer", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Issuer = "mallory" }), want: deny.IssuerUntrusted},
		{name: "any issuer when none trusted", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Issuer = "mallory" }), opts: func(o *VerifierOptions) { o.TrustedIssuers = nil }, want: ""},

		// Order: the first failing check decides.
		{name: "bad signature and expired", token: func() string {
			tok := mintWith(t, AlgEdDSA, expired)
			return tok[:strings.LastIndexByte(tok, '.')+1] + sig
		}(), want: deny.TokenInvalid},
		{name: "wrong typ and expired", token: func() string {
			p := basePayload()
			p["exp"] = now.Add(-time.Hour).Unix()
			return signRaw(t, AlgEdDSA, k.byAlg[AlgEdDSA].Key, []byte(`{"alg":"EdDSA","kid":"ed","typ":"JWT"}`), mustJSON(p))
		}(), want: deny.TokenInvalid},
		{name: "malformed grant and expired", token: payload(func(p map[string]any) {
			p["exp"] = now.Add(-time.Hour).Unix()
			p["m1"] = map[string]any{"kind": "grant", "tools": []any{"*"}, "max_uses": 1}
		}), want: deny.TokenInvalid},
		{name: "expired and wrong aud", token: mintWith(t, AlgEdDSA, func(c *Claims) { expired(c); c.Audience = []string{"other"} }), want: deny.TokenExpired},
		{name: "expired and not yet valid", token: mintWith(t, AlgEdDSA, times(-time.Hour, time.Hour, -time.Hour)), want: deny.TokenExpired},
		{name: "not yet valid and ttl over max", token: mintWith(t, AlgEdDSA, times(time.Hour, time.Hour, 3*time.Hour)), want: deny.TokenNotYetValid},
		{name: "ttl over max and wrong aud", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Expiry = t0.Add(time.Hour); c.Audience = []string{"other"} }), want: deny.TokenTTLExceeded},
		{name: "wrong aud and untrusted issuer", token: mintWith(t, AlgEdDSA, func(c *Claims) { c.Audience = []string{"other"}; c.Issuer = "mallory" }), want: deny.AudienceMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newTestVerifier(t, tt.opts)
			c, err := v.Verify(tt.token)
			t.Logf("Verify(%s) = %v", tt.name, err)
			if got := code(err); got != orOK(tt.want) {
				t.Fatalf("Verify(%s) = %s (%v), want %s", tt.name, got, err, orOK(tt.want))
			}
			if tt.want == "" {
				if c == nil {
					t.Fatalf("Verify(%s) = nil claims, nil error", tt.name)
				}
				return
			}
			if c != nil {
				t.Errorf("Verify(%s) returned claims with an error", tt.name)
			}
			if !errors.Is(err, sentinelFor[tt.want]) {
				t.Errorf("errors.Is(Verify(%s), sentinel %s) = false", tt.name, tt.want)
			}
			for code, s := range sentinelFor {
				if code != tt.want && errors.Is(err, s) {
					t.Errorf("errors.Is(Verify(%s), sentinel %s) = true", tt.name, code)
				}
			}
		})
	}
}

func orOK(code string) string {
	if code == "" {
		return "ok"
	}
	return code
}

func TestVerifyClaims(t *testing.T) {
	v := newTestVerifier(t, nil)
	tok := mintWith(t, AlgEdDSA, nil)
	c, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(approval) = %v, want ok", err)
	}
	want := approvalClaims()
	assertClaims(t, "approval", c, want)
	raw := strings.Split(tok, ".")[1]
	if b64(c.Raw) != raw {
		t.Errorf("Raw = %s, want the signed payload", c.Raw)
	}

	g, err := v.Verify(mint(t, keys().byAlg[AlgEdDSA], grantClaims()))
	if err != nil {
		t.Fatalf("Verify(grant) = %v, want ok", err)
	}
	assertClaims(t, "grant", g, grantClaims())
}

// assertClaims compares everything Mint encodes.
func assertClaims(t *testing.T, name string, got *Claims, want Claims) {
	t.Helper()
	if got.PayloadSHA256 != sha256Of(got.Raw) {
		t.Errorf("%s: PayloadSHA256 is not the SHA-256 of Raw", name)
	}
	for _, f := range []struct {
		field     string
		got, want any
	}{
		{"Issuer", got.Issuer, want.Issuer}, {"Subject", got.Subject, want.Subject},
		{"ID", got.ID, want.ID}, {"Actor", got.Actor, want.Actor},
		{"Audience", strings.Join(got.Audience, ","), strings.Join(want.Audience, ",")},
		{"IssuedAt", got.IssuedAt.Unix(), want.IssuedAt.Unix()},
		{"NotBefore", got.NotBefore.Unix(), want.NotBefore.Unix()},
		{"Expiry", got.Expiry.Unix(), want.Expiry.Unix()},
		{"Kind", got.Kind, want.Kind}, {"Tool", got.Tool, want.Tool}, {"ArgsSHA256", got.ArgsSHA256, want.ArgsSHA256},
		{"Tools", strings.Join(got.Tools, ","), strings.Join(want.Tools, ",")}, {"MaxUses", got.MaxUses, want.MaxUses},
		{"RunID", got.RunID, want.RunID}, {"ProposalID", got.ProposalID, want.ProposalID},
	} {
		if f.got != f.want {
			t.Errorf("%s: %s = %v, want %v", name, f.field, f.got, f.want)
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := error(&Error{Code: deny.TokenExpired, Reason: "expired at x"})
	if !errors.Is(err, ErrExpired) || errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(%v, ErrExpired/ErrInvalid) wrong", err)
	}
	if got := err.Error(); got != "token_expired: expired at x" {
		t.Errorf("Error() = %q", got)
	}
	if got := ErrIssuer.Error(); got != deny.IssuerUntrusted {
		t.Errorf("ErrIssuer.Error() = %q", got)
	}
}

func TestNewVerifierOptions(t *testing.T) {
	tests := []struct {
		name string
		edit func(*VerifierOptions)
		want string // substring of the error
	}{
		{"no keys", func(o *VerifierOptions) { o.Keys = nil }, "Keys"},
		{"empty keys", func(o *VerifierOptions) { o.Keys = &KeySet{} }, "Keys"},
		{"no audience", func(o *VerifierOptions) { o.Audience = "" }, "M1_AUDIENCE"},
		{"negative MaxTTL", func(o *VerifierOptions) { o.MaxTTL = -time.Second }, "MaxTTL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := VerifierOptions{Keys: keys().ks, Audience: testAud}
			tt.edit(&o)
			_, err := NewVerifier(o)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewVerifier(%s) = %v, want an error mentioning %q", tt.name, err, tt.want)
			}
		})
	}
	if _, err := NewVerifier(VerifierOptions{Keys: keys().ks, Audience: testAud}); err != nil {
		t.Fatalf("NewVerifier(defaults) = %v", err)
	}
}

func TestVerifyCache(t *testing.T) {
	clock := t0.Add(time.Minute)
	var mu sync.Mutex
	nowFn := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	setNow := func(tm time.Time) { mu.Lock(); defer mu.Unlock(); clock = tm }

	t.Run("second verify skips the signature", func(t *testing.T) {
		setNow(t0.Add(time.Minute))
		v := newTestVerifier(t, func(o *VerifierOptions) { o.Now = nowFn })
		tok := mint(t, keys().byAlg[AlgEdDSA], grantClaims())
		c1, err := v.Verify(tok)
		if err != nil {
			t.Fatalf("Verify(grant) = %v, want ok", err)
		}
		c2, err := v.Verify("Bearer " + tok)
		if err != nil {
			t.Fatalf("Verify(grant, again) = %v, want ok", err)
		}
		if n := v.signatureChecks.Load(); n != 1 {
			t.Errorf("signature checks after two Verify = %d, want 1", n)
		}
		if c1 != c2 {
			t.Errorf("Verify(again) returned different claims, want the cached *Claims")
		}
		setNow(t0.Add(5*time.Minute + 30*time.Second))
		if _, err := v.Verify(tok); code(err) != deny.TokenExpired {
			t.Errorf("Verify(cached, now expired) = %s, want %s", code(err), deny.TokenExpired)
		}
		if n := v.signatureChecks.Load(); n != 1 {
			t.Errorf("signature checks after expiry = %d, want 1", n)
		}
	})

	t.Run("failures are not cached", func(t *testing.T) {
		setNow(t0.Add(time.Minute))
		v := newTestVerifier(t, func(o *VerifierOptions) { o.Now = nowFn })
		tok := mintWith(t, AlgEdDSA, func(c *Claims) { c.Audience = []string{"other"} })
		for range 2 {
			if _, err := v.Verify(tok); code(err) != deny.AudienceMismatch {
				t.Fatalf("Verify(wrong aud) = %s, want %s", code(err), deny.AudienceMismatch)
			}
		}
		// Checks 1–2 passed, so the token is cached; check 6 ran each time.
		if n := v.signatureChecks.Load(); n != 1 {
			t.Errorf("signature checks = %d, want 1", n)
		}
		bad := tamperSignature(mintWith(t, AlgEdDSA, nil))
		for range 2 {
			_, _ = v.Verify(bad)
		}
		if n := v.signatureChecks.Load(); n != 3 {
			t.Errorf("signature checks after two bad signatures = %d, want 3", n)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		setNow(t0.Add(time.Minute))
		v := newTestVerifier(t, func(o *VerifierOptions) { o.Now = nowFn; o.CacheSize = -1 })
		tok := mintWith(t, AlgEdDSA, nil)
		for range 3 {
			if _, err := v.Verify(tok); err != nil {
				t.Fatalf("Verify = %v, want ok", err)
			}
		}
		if n := v.signatureChecks.Load(); n != 3 {
			t.Errorf("signature checks with the cache off = %d, want 3", n)
		}
	})
}

func tamperSignature(tok string) string {
	i := strings.LastIndexByte(tok, '.') + 1
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

func TestKeyRotation(t *testing.T) {
	k := keys()
	ks, err := ParseJWKS(jwksOf(k.byAlg[AlgEdDSA], k.ed2))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = ks })
	old := mint(t, k.byAlg[AlgEdDSA], approvalClaims())
	cur := mint(t, k.ed2, approvalClaims())
	for name, tok := range map[string]string{"ed": old, "ed2": cur} {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("Verify(kid %s) = %v, want ok", name, err)
		}
	}

	// Drop "ed": its (cached) token must fail at once.
	only2, err := ParseJWKS(jwksOf(k.ed2))
	if err != nil {
		t.Fatal(err)
	}
	v.SetKeys(only2)
	if v.Keys() != only2 {
		t.Errorf("Keys() is not the set just installed")
	}
	if _, err := v.Verify(old); code(err) != deny.TokenInvalid {
		t.Errorf("Verify(removed kid, cached) = %s, want %s", code(err), deny.TokenInvalid)
	}
	if _, err := v.Verify(cur); err != nil {
		t.Errorf("Verify(kept kid) = %v, want ok", err)
	}
	v.SetKeys(nil)
	if _, err := v.Verify(cur); code(err) != deny.TokenInvalid {
		t.Errorf("Verify(after SetKeys(nil)) = %s, want %s", code(err), deny.TokenInvalid)
	}
}

// TestVerifyConcurrent exercises the cache and key swaps under -race.
func TestVerifyConcurrent(t *testing.T) {
	k := keys()
	both, err := ParseJWKS(jwksOf(k.byAlg[AlgEdDSA], k.ed2))
	if err != nil {
		t.Fatal(err)
	}
	only2, err := ParseJWKS(jwksOf(k.ed2))
	if err != nil {
		t.Fatal(err)
	}
	v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = both })
	cur := mint(t, k.ed2, approvalClaims())
	old := mint(t, k.byAlg[AlgEdDSA], approvalClaims())
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				if g == 0 && i%20 == 0 {
					if i%40 == 0 {
						v.SetKeys(only2)
					} else {
						v.SetKeys(both)
					}
				}
				if _, err := v.Verify(cur); err != nil {
					t.Errorf("Verify(kept kid) = %v, want ok", err)
					return
				}
				_, _ = v.Verify(old)
			}
		})
	}
	wg.Wait()
	v.SetKeys(only2)
	if _, err := v.Verify(old); code(err) != deny.TokenInvalid {
		t.Errorf("Verify(removed kid) after concurrent use = %s, want %s", code(err), deny.TokenInvalid)
	}
}

func TestMatchesTool(t *testing.T) {
	grant := &Claims{Kind: KindGrant, Tools: []string{"github.get_issue", "search.*", "fs-"}}
	approval := &Claims{Kind: KindApproval, Tool: "github.create_issue"}
	tests := []struct {
		c    *Claims
		tool string
		want bool
	}{
		{grant, "github.get_issue", true},
		{grant, "github.get_issues", false},
		{grant, "search.web", true},
		{grant, "search.", true},
		{grant, "search", false},
		{grant, "fs-", true},
		{grant, "fs-read", false},
		{grant, "", false},
		{approval, "github.create_issue", true},
		{approval, "github.create", false},
		{&Claims{Kind: KindGrant, Tools: []string{"*"}}, "anything", false},
	}
	for _, tt := range tests {
		if got := tt.c.MatchesTool(tt.tool); got != tt.want {
			t.Errorf("MatchesTool(%s %v, %q) = %v, want %v", tt.c.Kind, append(tt.c.Tools, tt.c.Tool), tt.tool, got, tt.want)
		}
	}
}
