package approval

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// t0 is the tests' "now" minus a minute: tokens are issued at t0 and the
// verifiers' clock reads t0+1m.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testAud    = "tools.example"
	testIss    = "m1-cli"
	testSecret = "0123456789abcdef0123456789abcdef-test-secret"
)

var testArgsHash = strings.Repeat("ab", 32)

type testKeys struct {
	byAlg map[string]*SigningKey // EdDSA, ES256, RS256 (kids "ed", "ec", "rsa") and HS256
	ed2   *SigningKey            // a second Ed25519 key, kid "ed2", for rotation
	jwks  []byte                 // public keys of EdDSA, ES256, RS256
	ks    *KeySet                // jwks + testSecret
}

// keys generates the test keys once per test binary: RSA-3072 is slow.
var keys = sync.OnceValue(func() *testKeys {
	k := &testKeys{byAlg: map[string]*SigningKey{}}
	for alg, kid := range map[string]string{AlgEdDSA: "ed", AlgES256: "ec", AlgRS256: "rsa"} {
		sk, err := GenerateKey(alg, kid)
		if err != nil {
			panic(err)
		}
		k.byAlg[alg] = sk
	}
	hk, err := HMACKey([]byte(testSecret))
	if err != nil {
		panic(err)
	}
	k.byAlg[AlgHS256] = hk
	if k.ed2, err = GenerateKey(AlgEdDSA, "ed2"); err != nil {
		panic(err)
	}
	k.jwks = jwksOf(k.byAlg[AlgEdDSA], k.byAlg[AlgES256], k.byAlg[AlgRS256])
	pub, err := ParseJWKS(k.jwks)
	if err != nil {
		panic(err)
	}
	if k.ks, err = pub.WithSecret([]byte(testSecret)); err != nil {
		panic(err)
	}
	return k
})

// jwksOf returns a JWKS holding the public halves of sks.
func jwksOf(sks ...*SigningKey) []byte {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	for _, sk := range sks {
		one, err := sk.PublicJWKS()
		if err != nil {
			panic(err)
		}
		var s struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := json.Unmarshal(one, &s); err != nil {
			panic(err)
		}
		set.Keys = append(set.Keys, s.Keys...)
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return b
}

func approvalClaims() Claims {
	return Claims{
		Issuer: testIss, Subject: "agent-7", ID: "jti-1", Actor: "alice@example.com",
		Audience: []string{testAud},
		IssuedAt: t0, NotBefore: t0, Expiry: t0.Add(5 * time.Minute),
		Kind: KindApproval, Tool: "github.create_issue", ArgsSHA256: testArgsHash,
		RunID: "run-1", ProposalID: "prop-1",
	}
}

func grantClaims() Claims {
	return Claims{
		Issuer: testIss, Subject: "agent-7", ID: "jti-g",
		Audience: []string{testAud},
		IssuedAt: t0, NotBefore: t0, Expiry: t0.Add(5 * time.Minute),
		Kind: KindGrant, Tools: []string{"github.get_issue", "search.*"}, MaxUses: 3,
	}
}

func mint(t testing.TB, k *SigningKey, c Claims) string {
	t.Helper()
	tok, err := Mint(k, c)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return tok
}

func mintWith(t testing.TB, alg string, edit func(*Claims)) string {
	t.Helper()
	c := approvalClaims()
	if edit != nil {
		edit(&c)
	}
	return mint(t, keys().byAlg[alg], c)
}

// basePayload is approvalClaims as a JSON object, to be edited into
// malformed payloads that Mint refuses to produce.
func basePayload() map[string]any {
	return map[string]any{
		"iss": testIss, "sub": "agent-7", "aud": []any{testAud},
		"iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Add(5 * time.Minute).Unix(),
		"jti": "jti-raw", "act": map[string]any{"sub": "alice@example.com"},
		"m1": map[string]any{"kind": KindApproval, "tool": "github.create_issue", "args_sha256": testArgsHash},
	}
}

func m1Of(p map[string]any) map[string]any { return p["m1"].(map[string]any) }

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// signRaw signs header and payload JSON as given with key under the named
// JWS alg, bypassing Mint's checks.
func signRaw(t testing.TB, alg string, key any, header, payload []byte) string {
	t.Helper()
	input := b64(header) + "." + b64(payload)
	sig, err := jwt.GetSigningMethod(alg).Sign(input, key)
	if err != nil {
		t.Fatalf("sign %s: %v", alg, err)
	}
	return input + "." + b64(sig)
}

// signPayload signs payload with the EdDSA test key under a standard header.
func signPayload(t testing.TB, payload map[string]any) string {
	t.Helper()
	return signRaw(t, AlgEdDSA, keys().byAlg[AlgEdDSA].Key,
		[]byte(`{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`), mustJSON(payload))
}

// signHeader signs the base payload with the EdDSA test key under header.
func signHeader(t testing.TB, header string) string {
	t.Helper()
	return signRaw(t, AlgEdDSA, keys().byAlg[AlgEdDSA].Key, []byte(header), mustJSON(basePayload()))
}

func newTestVerifier(t testing.TB, edit func(*VerifierOptions)) *Verifier {
	t.Helper()
	o := VerifierOptions{
		Keys:           keys().ks,
		Audience:       testAud,
		TrustedIssuers: []string{testIss},
		Now:            func() time.Time { return t0.Add(time.Minute) },
	}
	if edit != nil {
		edit(&o)
	}
	v, err := NewVerifier(o)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// code renders Verify's outcome for failure messages.
func code(err error) string {
	if err == nil {
		return "ok"
	}
	if e, ok := err.(*Error); ok {
		return e.Code
	}
	return "non-*Error " + err.Error()
}

// writeFileAtomic writes data to path by renaming a temporary file over it.
func writeFileAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}

func sha256Of(b []byte) [32]byte { return sha256.Sum256(b) }
