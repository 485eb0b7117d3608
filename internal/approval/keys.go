package approval

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	jose "github.com/go-jose/go-jose/v4"
	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/golang-jwt/jwt/v5"
	voied25519 "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// Algorithms, as they appear in the JWS alg header and the JWK alg member.
const (
	AlgEdDSA = "EdDSA" // Ed25519 (the default)
	AlgES256 = "ES256" // ECDSA P-256 with SHA-256
	AlgRS256 = "RS256" // RSASSA-PKCS1-v1_5 with SHA-256, modulus ≥ 2048 bits
	AlgHS256 = "HS256" // HMAC-SHA-256 with M1_JWT_SECRET only
)

// MinSecretLen is the shortest HS256 secret accepted.
const MinSecretLen = 32

var errShortSecret = errors.New("M1_JWT_SECRET must be at least 32 bytes")

const minRSABits = 2048

// verificationKey is a key with its pinned algorithm.
type verificationKey struct {
	alg    string
	method jwt.SigningMethod
	key    any // ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey or []byte (HS256)
	// ed is an Ed25519 key decompressed once, with its precomputed
	// tables, for curve25519-voi's verification (EdDSA keys only).
	ed *voied25519.ExpandedPublicKey
}

// newVerificationKey pins key to alg; an Ed25519 key is expanded once.
func newVerificationKey(alg string, key any) (verificationKey, error) {
	k := verificationKey{alg: alg, method: jwt.GetSigningMethod(alg), key: key}
	if pub, ok := key.(ed25519.PublicKey); ok {
		ed, err := voied25519.NewExpandedPublicKey(voied25519.PublicKey(pub))
		if err != nil {
			return verificationKey{}, err
		}
		k.ed = ed
	}
	return k, nil
}

// errEd25519Verification is golang-jwt's wording for a bad signature.
var errEd25519Verification = errors.New("ed25519: verification error")

// verify checks sig over input with the key's pinned algorithm. Ed25519
// signatures are checked by curve25519-voi with the expanded key (about
// 1.8× faster than crypto/ed25519, which decompresses the key and builds its
// tables on every call), with the options that make it accept exactly what
// crypto/ed25519 accepts (TestEd25519AgreesWithStdlib); the other
// algorithms by golang-jwt's SigningMethod.
func (k verificationKey) verify(input string, sig []byte) error {
	if k.ed == nil {
		return k.method.Verify(input, sig, k.key)
	}
	if !voied25519.VerifyExpandedWithOptions(k.ed, []byte(input), sig, ed25519StdLib) {
		return errEd25519Verification
	}
	return nil
}

// ed25519StdLib verifies as crypto/ed25519 does (RFC 8032 without the
// cofactor, small-order and non-canonical points accepted, S < L).
var ed25519StdLib = &voied25519.Options{Verify: voied25519.VerifyOptionsStdLib}

// KeySet holds verification keys by kid (EdDSA/Ed25519, ES256/P-256,
// RS256/RSA ≥ 2048 bits), each pinned to one algorithm, and an optional HS256
// secret used for tokens that carry no kid.
//
// A KeySet is immutable and safe for concurrent use; a nil *KeySet is an
// empty set. Build a new one to rotate keys and hand it to
// [Verifier.SetKeys].
type KeySet struct {
	keys   map[string]verificationKey
	secret *verificationKey
}

// ParseJWKS parses a JSON Web Key Set ({"keys": [...]}) of public signing
// keys, each decoded by go-jose's JSONWebKey.
//
// Every key needs a kid, unique in the set. Each key's algorithm is pinned:
// the JWK "alg" if given (which must suit the key), else derived from the key
// (OKP Ed25519 → EdDSA, EC P-256 → ES256, RSA → RS256). It is an error, naming
// the kid, for a key to be private (a sidecar holds public keys only),
// symmetric (HS256 comes from M1_JWT_SECRET, see [KeySet.WithSecret]), of
// another type or curve, an RSA key under 2048 bits, or to have a "use" other
// than "sig". A set with no keys is an error, so that a truncated file cannot
// silently replace working keys.
func ParseJWKS(data []byte) (*KeySet, error) {
	var set struct {
		Keys []jsontext.Value `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("parse jwks: no keys")
	}
	ks := &KeySet{keys: make(map[string]verificationKey, len(set.Keys))}
	for i, raw := range set.Keys {
		var hdr struct {
			KID string `json:"kid"`
		}
		if err := json.Unmarshal(raw, &hdr); err != nil {
			return nil, fmt.Errorf("parse jwks: key %d: %w", i, err)
		}
		if hdr.KID == "" {
			return nil, fmt.Errorf("parse jwks: key %d has no kid", i)
		}
		if _, dup := ks.keys[hdr.KID]; dup {
			return nil, fmt.Errorf("parse jwks: duplicate kid %q", hdr.KID)
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("parse jwks: key %q: %w", hdr.KID, err)
		}
		if _, ok := jwk.Key.([]byte); ok {
			return nil, fmt.Errorf("parse jwks: key %q: symmetric keys are not allowed in a JWKS (HS256 uses M1_JWT_SECRET)", hdr.KID)
		}
		if !jwk.IsPublic() {
			return nil, fmt.Errorf("parse jwks: key %q is a private key; a verification JWKS holds public keys only", hdr.KID)
		}
		if jwk.Use != "" && jwk.Use != "sig" {
			return nil, fmt.Errorf("parse jwks: key %q: use %q, want \"sig\"", hdr.KID, jwk.Use)
		}
		alg, err := pinAlg(jwk.Key, jwk.Algorithm)
		if err != nil {
			return nil, fmt.Errorf("parse jwks: key %q: %w", hdr.KID, err)
		}
		k, err := newVerificationKey(alg, jwk.Key)
		if err != nil {
			return nil, fmt.Errorf("parse jwks: key %q: %w", hdr.KID, err)
		}
		ks.keys[hdr.KID] = k
	}
	return ks, nil
}

// LoadJWKS reads and parses the JWKS file at path (see [ParseJWKS]).
func LoadJWKS(path string) (*KeySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load jwks: %w", err)
	}
	ks, err := ParseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("load jwks %q: %w", path, err)
	}
	return ks, nil
}

// WithSecret returns a copy of ks that also verifies HS256 tokens without a
// kid against secret (M1_JWT_SECRET). A secret under [MinSecretLen] bytes is
// an error. ks may be nil, giving a set with the secret only. Anyone holding
// the secret can mint approvals, so callers should log a warning when one is
// configured.
func (ks *KeySet) WithSecret(secret []byte) (*KeySet, error) {
	if len(secret) < MinSecretLen {
		return nil, errShortSecret
	}
	out := &KeySet{secret: &verificationKey{alg: AlgHS256, method: jwt.SigningMethodHS256, key: slices.Clone(secret)}}
	if ks != nil {
		out.keys = ks.keys // immutable, so shared
	}
	return out, nil
}

// KIDs returns the key ids in the set, sorted. The HS256 secret has none.
func (ks *KeySet) KIDs() []string {
	if ks == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(ks.keys))
}

// HasSecret reports whether the set has an HS256 secret.
func (ks *KeySet) HasSecret() bool { return ks != nil && ks.secret != nil }

// Len returns the number of keys with a kid (the secret is not counted).
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.keys)
}

// lookup resolves a header kid: a key by kid, or the secret for no kid.
func (ks *KeySet) lookup(kid string) (verificationKey, bool) {
	if ks == nil {
		return verificationKey{}, false
	}
	if kid == "" {
		if ks.secret == nil {
			return verificationKey{}, false
		}
		return *ks.secret, true
	}
	k, ok := ks.keys[kid]
	return k, ok
}

// pinAlg returns the algorithm for key: alg when given and suited to the key,
// else the one the key type implies. key may be public or private.
func pinAlg(key any, alg string) (string, error) {
	var want string
	switch k := key.(type) {
	case ed25519.PublicKey, ed25519.PrivateKey:
		want = AlgEdDSA
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", fmt.Errorf("unsupported curve %s (only P-256)", k.Curve.Params().Name)
		}
		want = AlgES256
	case *ecdsa.PrivateKey:
		return pinAlg(&k.PublicKey, alg)
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return "", fmt.Errorf("RSA key of %d bits (need ≥ %d)", n, minRSABits)
		}
		want = AlgRS256
	case *rsa.PrivateKey:
		return pinAlg(&k.PublicKey, alg)
	case []byte:
		want = AlgHS256
	default:
		return "", fmt.Errorf("unsupported key type %T", key)
	}
	if alg != "" && alg != want {
		return "", fmt.Errorf("alg %q does not suit the key (want %q)", alg, want)
	}
	return want, nil
}
