package approval

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var updateFuzzSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzVerifyToken from the fuzz fixture")

// fuzzFixture has fixed Ed25519, ES256 and HS256 keys, so the seed corpus
// holds tokens that verify, plus the random RS256 test key; tokens are
// minted from fixed claims.
type fuzzFixture struct {
	v      *Verifier
	ed     *SigningKey
	minted map[string]bool // signing inputs (header.payload) Mint produced
	tokens []string
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	seed := sha256.Sum256([]byte("m1 approval fuzz ed25519"))
	ed := &SigningKey{KID: "fuzz-ed", Alg: AlgEdDSA, Key: ed25519.NewKeyFromSeed(seed[:])}
	d := sha256.Sum256([]byte("m1 approval fuzz p-256"))
	ecKey, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), d[:])
	if err != nil {
		tb.Fatal(err)
	}
	ec := &SigningKey{KID: "fuzz-ec", Alg: AlgES256, Key: ecKey}
	hs, err := HMACKey([]byte(testSecret))
	if err != nil {
		tb.Fatal(err)
	}
	rs := keys().byAlg[AlgRS256]
	ks, err := ParseJWKS(jwksOf(ed, ec, rs))
	if err != nil {
		tb.Fatal(err)
	}
	if ks, err = ks.WithSecret([]byte(testSecret)); err != nil {
		tb.Fatal(err)
	}
	v, err := NewVerifier(VerifierOptions{
		Keys: ks, Audience: testAud, MaxTTL: time.Hour,
		Now: func() time.Time { return t0.Add(time.Minute) },
	})
	if err != nil {
		tb.Fatal(err)
	}
	fx := &fuzzFixture{v: v, ed: ed, minted: map[string]bool{}}
	long := grantClaims()
	long.Expiry = t0.Add(time.Hour)
	for _, k := range []*SigningKey{ed, ec, hs, rs} {
		for _, c := range []Claims{approvalClaims(), grantClaims(), long} {
			tok := mint(tb, k, c)
			fx.minted[tok[:strings.LastIndexByte(tok, '.')]] = true
			fx.tokens = append(fx.tokens, tok)
		}
	}
	return fx
}

// FuzzVerifyToken checks that Verify never panics, fails only with an
// *Error carrying a known code, and accepts only tokens whose signed
// content Mint produced with a known key. Inspect must not panic either.
func FuzzVerifyToken(f *testing.F) {
	fx := newFuzzFixture(f)
	for _, tok := range fx.tokens {
		f.Add(tok)
	}
	f.Add("Bearer " + fx.tokens[0])
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		_, _, _ = Inspect(token)
		c, err := fx.v.Verify(token)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || sentinelFor[e.Code] == nil {
				t.Fatalf("Verify(%q) = %v, want an *Error with a known code", token, err)
			}
			if c != nil {
				t.Fatalf("Verify(%q) returned claims with an error", token)
			}
			return
		}
		tok := trimBearer(token)
		input := tok[:strings.LastIndexByte(tok, '.')]
		if !fx.minted[input] {
			t.Fatalf("Verify(%q) = ok, but Mint never produced its signed content", token)
		}
		if b64(c.Raw) != input[strings.IndexByte(input, '.')+1:] {
			t.Fatalf("Verify(%q): Raw is not the signed payload", token)
		}
	})
}

// TestWriteFuzzSeeds rewrites the checked-in seed corpus:
//
//	go test ./internal/approval -run TestWriteFuzzSeeds -update-fuzz-seeds
func TestWriteFuzzSeeds(t *testing.T) {
	if !*updateFuzzSeeds {
		t.Skip("run with -update-fuzz-seeds to rewrite testdata/fuzz/FuzzVerifyToken")
	}
	fx := newFuzzFixture(t)
	ed, hs := fx.tokens[0], fx.tokens[6] // EdDSA and HS256 approvals
	parts := strings.Split(ed, ".")
	edPub := []byte(fx.ed.Key.Public().(ed25519.PublicKey))
	seeds := map[string]string{
		"eddsa_approval":  ed,
		"eddsa_grant":     fx.tokens[1],
		"es256_approval":  fx.tokens[3],
		"hs256_approval":  hs,
		"bearer":          "Bearer " + ed,
		"alg_none":        b64([]byte(`{"alg":"none","typ":"m1-approval+jwt"}`)) + "." + parts[1] + ".",
		"hs256_with_pub":  signRaw(t, AlgHS256, edPub, []byte(`{"alg":"HS256","kid":"fuzz-ed","typ":"m1-approval+jwt"}`), mustJSON(basePayload())),
		"wrong_typ":       signRaw(t, AlgHS256, []byte(testSecret), []byte(`{"alg":"HS256","typ":"JWT"}`), mustJSON(basePayload())),
		"extra_segment":   ed + ".e30",
		"tampered":        parts[0] + "." + b64(mustJSON(basePayload())) + "." + parts[2],
		"grant_bare_star": signRaw(t, AlgHS256, []byte(testSecret), []byte(`{"alg":"HS256","typ":"m1-approval+jwt"}`), []byte(`{"iss":"i","sub":"s","aud":"tools.example","iat":1772366400,"nbf":1772366400,"exp":1772366700,"jti":"j","m1":{"kind":"grant","tools":["*"],"max_uses":1}}`)),
		"empty":           "",
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzVerifyToken")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tok := range seeds {
		data := fmt.Sprintf("go test fuzz v1\nstring(%s)\n", strconv.Quote(tok))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFuzzSeedsVerify keeps the checked-in corpus meaningful: its valid
// tokens still verify under the fuzz fixture.
func TestFuzzSeedsVerify(t *testing.T) {
	fx := newFuzzFixture(t)
	for _, name := range []string{"eddsa_approval", "eddsa_grant", "es256_approval", "hs256_approval", "bearer"} {
		data, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzVerifyToken", name))
		if err != nil {
			t.Fatal(err)
		}
		lit, ok := strings.CutPrefix(strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[1]), "string(")
		if !ok {
			t.Fatalf("seed %s: unexpected format", name)
		}
		tok, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
		if err != nil {
			t.Fatalf("seed %s: %v", name, err)
		}
		if _, err := fx.v.Verify(tok); err != nil {
			t.Errorf("Verify(seed %s) = %v, want ok (regenerate with -update-fuzz-seeds)", name, err)
		}
	}
}
