package approval

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"

	"github.com/m1-agent/m1/internal/deny"
)

// jwkJSON marshals one JWK (public or private) with go-jose.
func jwkJSON(t *testing.T, key any, kid, alg, use string) string {
	t.Helper()
	b, err := (&jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: alg, Use: use}).MarshalJSON()
	if err != nil {
		t.Fatalf("marshal jwk %s: %v", kid, err)
	}
	return string(b)
}

func TestParseJWKS(t *testing.T) {
	k := keys()
	edPriv := k.byAlg[AlgEdDSA].Key
	edPub := edPriv.Public()
	ecPub := k.byAlg[AlgES256].Key.Public()
	rsaPub := k.byAlg[AlgRS256].Key.Public()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	set := func(keys ...string) []byte { return []byte(`{"keys":[` + strings.Join(keys, ",") + `]}`) }

	tests := []struct {
		name     string
		data     []byte
		wantKIDs []string
		wantErr  string // substring; "" = ok
	}{
		{name: "three algorithms", data: k.jwks, wantKIDs: []string{"ec", "ed", "rsa"}},
		{name: "alg derived", data: set(jwkJSON(t, edPub, "a", "", ""), jwkJSON(t, ecPub, "b", "", ""), jwkJSON(t, rsaPub, "c", "", "")), wantKIDs: []string{"a", "b", "c"}},
		{name: "use sig", data: set(jwkJSON(t, edPub, "a", "EdDSA", "sig")), wantKIDs: []string{"a"}},
		{name: "not JSON", data: []byte("nope"), wantErr: "parse jwks"},
		{name: "no keys member", data: []byte(`{}`), wantErr: "no keys"},
		{name: "empty keys", data: set(), wantErr: "no keys"},
		{name: "missing kid", data: set(jwkJSON(t, edPub, "", "", "")), wantErr: "no kid"},
		{name: "duplicate kid", data: set(jwkJSON(t, edPub, "a", "", ""), jwkJSON(t, ecPub, "a", "", "")), wantErr: `duplicate kid "a"`},
		{name: "private key", data: set(jwkJSON(t, edPriv, "priv", "", "")), wantErr: `"priv" is a private key`},
		{name: "private RSA key", data: set(jwkJSON(t, k.byAlg[AlgRS256].Key, "rpriv", "", "")), wantErr: `"rpriv" is a private key`},
		{name: "symmetric key", data: set(`{"kty":"oct","kid":"sym","k":"` + b64([]byte(testSecret)) + `"}`), wantErr: `"sym": symmetric`},
		{name: "P-384 curve", data: set(jwkJSON(t, &p384.PublicKey, "p384", "", "")), wantErr: `"p384": unsupported curve P-384`},
		{name: "RSA 1024", data: set(jwkJSON(t, &rsa1024.PublicKey, "small", "", "")), wantErr: `"small": RSA key of 1024 bits`},
		{name: "alg mismatch", data: set(jwkJSON(t, edPub, "mis", "ES256", "")), wantErr: `"mis": alg "ES256" does not suit`},
		{name: "RSA with PS256", data: set(jwkJSON(t, rsaPub, "ps", "PS256", "")), wantErr: `"ps": alg "PS256"`},
		{name: "use enc", data: set(jwkJSON(t, rsaPub, "enc", "", "enc")), wantErr: `"enc": use "enc"`},
		{name: "unknown kty", data: set(`{"kty":"XYZ","kid":"odd"}`), wantErr: `"odd"`},
		{name: "X25519", data: set(`{"kty":"OKP","crv":"X25519","kid":"x","x":"` + b64(make([]byte, 32)) + `"}`), wantErr: `"x"`},
		{name: "EC point off the curve", data: set(`{"kty":"EC","crv":"P-256","kid":"off","x":"` + b64(make([]byte, 32)) + `","y":"` + b64(make([]byte, 32)) + `"}`), wantErr: `"off"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ks, err := ParseJWKS(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseJWKS(%s) = %v, want an error containing %q", tt.name, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseJWKS(%s) = %v, want ok", tt.name, err)
			}
			if got := ks.KIDs(); !slices.Equal(got, tt.wantKIDs) {
				t.Errorf("ParseJWKS(%s).KIDs() = %v, want %v", tt.name, got, tt.wantKIDs)
			}
			if ks.Len() != len(tt.wantKIDs) || ks.HasSecret() {
				t.Errorf("ParseJWKS(%s): Len() = %d, HasSecret() = %v", tt.name, ks.Len(), ks.HasSecret())
			}
		})
	}
}

func TestLoadJWKS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jwks.json")
	if _, err := LoadJWKS(path); err == nil {
		t.Errorf("LoadJWKS(missing file) = ok, want an error")
	}
	if err := os.WriteFile(path, keys().jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	ks, err := LoadJWKS(path)
	if err != nil || ks.Len() != 3 {
		t.Fatalf("LoadJWKS = %v, %v; want 3 keys", ks.KIDs(), err)
	}
	if err := os.WriteFile(path, []byte(`{"keys":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadJWKS(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("LoadJWKS(empty set) = %v, want an error naming the path", err)
	}
}

func TestWithSecret(t *testing.T) {
	var nilSet *KeySet
	if _, err := nilSet.WithSecret([]byte("short")); err == nil || err.Error() != "M1_JWT_SECRET must be at least 32 bytes" {
		t.Errorf("WithSecret(5 bytes) = %v, want M1_JWT_SECRET must be at least 32 bytes", err)
	}
	if _, err := nilSet.WithSecret(make([]byte, 31)); err == nil {
		t.Errorf("WithSecret(31 bytes) = ok, want an error")
	}
	only, err := nilSet.WithSecret([]byte(testSecret))
	if err != nil {
		t.Fatalf("nil.WithSecret = %v", err)
	}
	if !only.HasSecret() || only.Len() != 0 || len(only.KIDs()) != 0 {
		t.Errorf("nil.WithSecret: HasSecret %v, Len %d, KIDs %v; want true, 0, []", only.HasSecret(), only.Len(), only.KIDs())
	}
	pub, err := ParseJWKS(keys().jwks)
	if err != nil {
		t.Fatal(err)
	}
	both, err := pub.WithSecret([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	if !both.HasSecret() || both.Len() != 3 || pub.HasSecret() {
		t.Errorf("WithSecret: HasSecret %v, Len %d, original HasSecret %v; want true, 3, false", both.HasSecret(), both.Len(), pub.HasSecret())
	}
	// Secret only: HS256 verifies, the asymmetric kids do not.
	v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = only })
	if _, err := v.Verify(mintWith(t, AlgHS256, nil)); err != nil {
		t.Errorf("Verify(HS256, secret-only set) = %v, want ok", err)
	}
	if _, err := v.Verify(mintWith(t, AlgEdDSA, nil)); code(err) != deny.TokenInvalid {
		t.Errorf("Verify(EdDSA, secret-only set) = %s, want %s", code(err), deny.TokenInvalid)
	}
	// A different secret does not verify.
	other, _ := nilSet.WithSecret([]byte(strings.Repeat("x", 32)))
	v.SetKeys(other)
	if _, err := v.Verify(mintWith(t, AlgHS256, nil)); code(err) != deny.TokenInvalid {
		t.Errorf("Verify(HS256, other secret) = %s, want %s", code(err), deny.TokenInvalid)
	}
}

func TestNilKeySet(t *testing.T) {
	var ks *KeySet
	if ks.Len() != 0 || ks.HasSecret() || ks.KIDs() != nil {
		t.Errorf("nil KeySet: Len %d, HasSecret %v, KIDs %v", ks.Len(), ks.HasSecret(), ks.KIDs())
	}
}

// Guard: the thumbprint kid GenerateKey picks is what go-jose computes.
func TestGenerateKeyThumbprintKID(t *testing.T) {
	sk, err := GenerateKey(AlgEdDSA, "")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := (&jose.JSONWebKey{Key: sk.Key.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if sk.KID != b64(tp) {
		t.Errorf("GenerateKey(EdDSA, \"\").KID = %q, want the RFC 7638 thumbprint %q", sk.KID, b64(tp))
	}
	var set struct{ Keys []map[string]any }
	pub, _ := sk.PublicJWKS()
	if err := json.Unmarshal(pub, &set); err != nil || len(set.Keys) != 1 || set.Keys[0]["kid"] != sk.KID {
		t.Errorf("PublicJWKS = %s, want one key with kid %q", pub, sk.KID)
	}
}

// TestEd25519AgreesWithStdlib: the Ed25519 keys of a JWKS are checked by
// curve25519-voi, not crypto/ed25519; both must accept exactly the same
// signatures, tampered ones included: every bit of the signature flipped,
// S made non-canonical (S+L), the wrong length, another message, and the
// small-order public key (the identity) with the signature (R = identity,
// S = 0) that crypto/ed25519's cofactorless equation accepts.
func TestEd25519AgreesWithStdlib(t *testing.T) {
	check := func(t *testing.T, pub ed25519.PublicKey, msg, sig []byte) {
		t.Helper()
		k, err := newVerificationKey(AlgEdDSA, pub)
		if err != nil {
			t.Fatalf("newVerificationKey: %v", err)
		}
		if k.ed == nil {
			t.Fatal("an Ed25519 key was not expanded for curve25519-voi")
		}
		want := ed25519.Verify(pub, msg, sig)
		if got := k.verify(string(msg), sig) == nil; got != want {
			t.Fatalf("verify(msg %q, sig %x) = %v, crypto/ed25519 says %v", msg, sig, got, want)
		}
	}
	// L, the order of the base point, little-endian.
	order := [32]byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	addL := func(s []byte) []byte { // s + L, little-endian (may exceed 2^253: still 32 bytes)
		out, carry := make([]byte, 32), 0
		for i := range 32 {
			v := int(s[i]) + int(order[i]) + carry
			out[i], carry = byte(v), v>>8
		}
		return out
	}
	accepted := 0
	for i := range 20 {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("eyJhbGciOiJFZERTQSJ9.eyJqdGkiOiJ" + strings.Repeat("x", i))
		sig := ed25519.Sign(priv, msg)
		check(t, pub, msg, sig)
		if ed25519.Verify(pub, msg, sig) {
			accepted++
		}
		check(t, pub, append(slices.Clone(msg), 'y'), sig)
		check(t, pub, msg, sig[:63])
		check(t, pub, msg, append(slices.Clone(sig), 0))
		check(t, pub, msg, append(slices.Clone(sig[:32]), addL(sig[32:])...))
		for bit := range 8 * len(sig) {
			bad := slices.Clone(sig)
			bad[bit/8] ^= 1 << (bit % 8)
			check(t, pub, msg, bad)
		}
	}
	if accepted != 20 {
		t.Fatalf("%d of 20 good signatures verified", accepted)
	}
	identity := make([]byte, 32)
	identity[0] = 1
	smallSig := append(slices.Clone(identity), make([]byte, 32)...)
	if !ed25519.Verify(identity, []byte("any"), smallSig) {
		t.Fatal("crypto/ed25519 no longer accepts the small-order case; update this test")
	}
	check(t, identity, []byte("any"), smallSig)

	// A key with a small-order component (A' = A + T, T of order 8) and a
	// signature by A's scalar: the cofactored equation (ZIP-215) accepts
	// it, crypto/ed25519's cofactorless one does not.
	pub, msg, sig := torsionSigned(t)
	if ed25519.Verify(pub, msg, sig) {
		t.Fatal("crypto/ed25519 accepts the torsion case; update this test")
	}
	check(t, pub, msg, sig)
}

// torsionSigned returns a public key A+T (T of order 8), a message and a
// signature (R, S = r + k·a) that only a cofactored verifier accepts.
func torsionSigned(t *testing.T) (ed25519.PublicKey, []byte, []byte) {
	t.Helper()
	var a, r scalar.Scalar
	if _, err := a.SetRandom(rand.Reader); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetRandom(rand.Reader); err != nil {
		t.Fatal(err)
	}
	var pa, pr curve.EdwardsPoint
	pa.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &a)
	pa.Add(&pa, curve.EIGHT_TORSION[1])
	pr.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &r)
	var ca, cr curve.CompressedEdwardsY
	ca.SetEdwardsPoint(&pa)
	cr.SetEdwardsPoint(&pr)
	for i := range 64 {
		msg := []byte("torsion-" + strconv.Itoa(i))
		h := sha512.New()
		h.Write(cr[:])
		h.Write(ca[:])
		h.Write(msg)
		var k, s scalar.Scalar
		if _, err := k.SetBytesModOrderWide(h.Sum(nil)); err != nil {
			t.Fatal(err)
		}
		s.Mul(&k, &a)
		s.Add(&s, &r)
		sig := make([]byte, 64)
		copy(sig, cr[:])
		if err := s.ToBytes(sig[32:]); err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(ed25519.PublicKey(ca[:]), msg, sig) { // k·T ≠ identity: only cofactored accepts
			return ed25519.PublicKey(ca[:]), msg, sig
		}
	}
	t.Fatal("no message gave a signature that only a cofactored verifier accepts")
	return nil, nil, nil
}
