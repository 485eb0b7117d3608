package approval

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	json "github.com/go-json-experiment/json"
	"github.com/golang-jwt/jwt/v5"

	"github.com/m1-agent/m1/internal/deny"
)

// SigningKey is an operator's key for minting tokens: an asymmetric private
// key (ed25519.PrivateKey, *ecdsa.PrivateKey on P-256, *rsa.PrivateKey) with
// its kid and alg, or, for HS256, Secret (then KID is empty and Key nil).
type SigningKey struct {
	KID, Alg string
	Key      crypto.Signer
	Secret   []byte
}

// rsaGenBits is the modulus size GenerateKey uses for RS256.
const rsaGenBits = 3072

// GenerateKey generates a signing key for alg: "EdDSA" (Ed25519), "ES256"
// (P-256) or "RS256" (RSA 3072). An empty kid becomes the key's RFC 7638
// thumbprint. For HS256 use [HMACKey].
func GenerateKey(alg, kid string) (*SigningKey, error) {
	var key crypto.Signer
	var err error
	switch alg {
	case AlgEdDSA:
		_, key, err = ed25519.GenerateKey(rand.Reader)
	case AlgES256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case AlgRS256:
		key, err = rsa.GenerateKey(rand.Reader, rsaGenBits)
	default:
		return nil, fmt.Errorf("generate key: unsupported alg %q (want EdDSA, ES256 or RS256)", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", alg, err)
	}
	if kid == "" {
		tp, err := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("generate %s key: thumbprint: %w", alg, err)
		}
		kid = base64.RawURLEncoding.EncodeToString(tp)
	}
	return &SigningKey{KID: kid, Alg: alg, Key: key}, nil
}

// HMACKey returns an HS256 signing key (no kid) for secret, which must be at
// least [MinSecretLen] bytes. Tokens it mints verify only against a
// [KeySet.WithSecret] holding the same secret.
func HMACKey(secret []byte) (*SigningKey, error) {
	if len(secret) < MinSecretLen {
		return nil, errShortSecret
	}
	return &SigningKey{Alg: AlgHS256, Secret: slices.Clone(secret)}, nil
}

// MarshalPrivateJWK returns the key as a private JWK (JSON) with kid, alg and
// use "sig": the file [LoadSigningKey] reads. An HS256 key becomes an oct
// JWK. Store the result with file mode 0600.
func (k *SigningKey) MarshalPrivateJWK() ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	jwk := jose.JSONWebKey{Key: k.Key, KeyID: k.KID, Algorithm: k.Alg, Use: "sig"}
	if k.Alg == AlgHS256 {
		jwk.Key = k.Secret
	}
	return jwk.MarshalJSON()
}

// PublicJWKS returns {"keys": [the public JWK]} for the sidecar's
// M1_JWKS_FILE. It is an error for an HS256 key, which has no public half.
func (k *SigningKey) PublicJWKS() ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	if k.Alg == AlgHS256 {
		return nil, errors.New("public jwks: an HS256 key has no public key")
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.Key.Public(), KeyID: k.KID, Algorithm: k.Alg, Use: "sig"}}}
	return stdjson.Marshal(set)
}

// LoadSigningKey reads a private JWK file as written by
// [SigningKey.MarshalPrivateJWK]. Public keys, asymmetric keys without a kid,
// unsupported key types, and an alg that does not suit the key are errors.
func LoadSigningKey(path string) (*SigningKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load signing key: %w", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("load signing key %q: %w", path, err)
	}
	k := &SigningKey{KID: jwk.KeyID, Alg: jwk.Algorithm}
	switch key := jwk.Key.(type) {
	case []byte:
		k.Secret = key
	case ed25519.PrivateKey, *ecdsa.PrivateKey, *rsa.PrivateKey:
		k.Key = key.(crypto.Signer)
	case ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey:
		return nil, fmt.Errorf("load signing key %q: is a public key; minting needs the private key", path)
	default:
		return nil, fmt.Errorf("load signing key %q: unsupported key type %T", path, jwk.Key)
	}
	if k.Alg == "" {
		var key any = k.Key
		if k.Secret != nil {
			key = k.Secret
		}
		if k.Alg, err = pinAlg(key, ""); err != nil {
			return nil, fmt.Errorf("load signing key %q: %w", path, err)
		}
	}
	if err := k.validate(); err != nil {
		return nil, fmt.Errorf("load signing key %q: %w", path, err)
	}
	return k, nil
}

// validate checks that Alg suits the key and that an asymmetric key has a kid.
func (k *SigningKey) validate() error {
	if k == nil {
		return errors.New("signing key: nil")
	}
	var key any = k.Key
	if k.Alg == AlgHS256 {
		if len(k.Secret) < MinSecretLen {
			return errShortSecret
		}
		key = k.Secret
	} else if k.Key == nil {
		return fmt.Errorf("signing key: no key for alg %q", k.Alg)
	}
	alg, err := pinAlg(key, k.Alg)
	if err != nil {
		return fmt.Errorf("signing key %q: %w", k.KID, err)
	}
	if alg != k.Alg {
		return fmt.Errorf("signing key %q: alg %q does not suit the key", k.KID, k.Alg)
	}
	if alg != AlgHS256 && k.KID == "" {
		return errors.New("signing key: an asymmetric key needs a kid")
	}
	return nil
}

// Wire forms for Mint; member order is the order in the token.
type mintHeader struct {
	Alg string `json:"alg"`
	KID string `json:"kid,omitzero"`
	Typ string `json:"typ"`
}

type mintPayload struct {
	Iss string     `json:"iss"`
	Sub string     `json:"sub"`
	Aud []string   `json:"aud"`
	Iat int64      `json:"iat"`
	Nbf int64      `json:"nbf"`
	Exp int64      `json:"exp"`
	Jti string     `json:"jti"`
	Act *mintActor `json:"act,omitzero"`
	M1  mintM1     `json:"m1"`
}

type mintActor struct {
	Sub string `json:"sub"`
}

type mintM1 struct {
	Kind       string   `json:"kind"`
	Tool       string   `json:"tool,omitzero"`
	ArgsSHA256 string   `json:"args_sha256,omitzero"`
	Tools      []string `json:"tools,omitzero"`
	MaxUses    int      `json:"max_uses,omitzero"`
	RunID      string   `json:"run_id,omitzero"`
	ProposalID string   `json:"proposal_id,omitzero"`
}

// Mint signs c with k and returns the JWS compact token. The header is
// {alg, kid (if any), typ: "m1-approval+jwt"}; the payload carries iss, sub,
// aud (an array), iat, nbf, exp (NumericDate seconds), jti, act {"sub":
// Actor} when Actor is set, and m1 {kind, tool and args_sha256 or tools and
// max_uses, run_id and proposal_id when set}.
//
// Defaults: IssuedAt zero → now; NotBefore zero → IssuedAt; ID empty → a
// jti from newJTI (the issue time, then 80 random bits; 22 base64url
// characters). Expiry is required. Raw and PayloadSHA256 are ignored.
// Claims that [Verifier.Verify] would reject as malformed (check 2) are an
// error; time, TTL, audience and issuer limits are the verifier's.
func Mint(k *SigningKey, c Claims) (string, error) {
	if err := k.validate(); err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.NotBefore.IsZero() {
		c.NotBefore = c.IssuedAt
	}
	if c.Expiry.IsZero() {
		return "", errors.New("mint: Expiry is required")
	}
	if c.ID == "" {
		c.ID = newJTI(c.IssuedAt)
	}
	p := mintPayload{
		Iss: c.Issuer, Sub: c.Subject, Aud: c.Audience,
		Iat: c.IssuedAt.Unix(), Nbf: c.NotBefore.Unix(), Exp: c.Expiry.Unix(),
		Jti: c.ID,
		M1: mintM1{
			Kind: c.Kind, Tool: c.Tool, ArgsSHA256: c.ArgsSHA256,
			Tools: c.Tools, MaxUses: c.MaxUses,
			RunID: c.RunID, ProposalID: c.ProposalID,
		},
	}
	if c.Actor != "" {
		p.Act = &mintActor{Sub: c.Actor}
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	if _, err := parseClaims(payload); err != nil {
		return "", fmt.Errorf("mint: invalid claims: %s", err.Reason)
	}
	header, err := json.Marshal(mintHeader{Alg: k.Alg, KID: k.KID, Typ: TokenType})
	if err != nil {
		return "", fmt.Errorf("mint: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	var key any = k.Key
	if k.Alg == AlgHS256 {
		key = k.Secret
	}
	sig, err := jwt.GetSigningMethod(k.Alg).Sign(input, key)
	if err != nil {
		return "", fmt.Errorf("mint: sign: %w", err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// Inspect decodes a token without verifying it, for `m1 token inspect`: the
// header and payload as generic JSON (numbers as float64). It returns
// whatever decoded along with an error describing what did not; nothing it
// returns is trustworthy.
func Inspect(token string) (header map[string]any, payload map[string]any, err error) {
	parts := strings.Split(trimBearer(strings.TrimSpace(token)), ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("inspect: %d segments, want 3 (header.payload.signature)", len(parts))
	}
	var errs []error
	decode := func(name, seg string) map[string]any {
		b, err := base64.RawURLEncoding.DecodeString(seg)
		if err != nil {
			errs = append(errs, fmt.Errorf("inspect: %s: %w", name, err))
			return nil
		}
		var m map[string]any
		if err := stdjson.Unmarshal(b, &m); err != nil {
			errs = append(errs, fmt.Errorf("inspect: %s: %w", name, err))
			return nil
		}
		return m
	}
	header = decode("header", parts[0])
	payload = decode("payload", parts[1])
	if parts[2] == "" {
		errs = append(errs, errors.New("inspect: no signature"))
	}
	return header, payload, errors.Join(errs...)
}

// ParseUnverified decodes a token's claims WITHOUT verifying its signature,
// times or audience, and checks only that they are well formed (check 2).
// Nothing it returns is trustworthy: it serves a party that holds no keys
// (the orchestrator) to refuse, before dispatch, a token that could not
// match the call anyway. The sidecar verifies every token it admits.
func ParseUnverified(token string) (*Claims, error) {
	parts := strings.Split(trimBearer(strings.TrimSpace(token)), ".")
	if len(parts) != 3 || len(token) > MaxTokenLen {
		return nil, &Error{Code: deny.TokenInvalid, Reason: "not a JWS compact token"}
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, &Error{Code: deny.TokenInvalid, Reason: "payload is not base64url"}
	}
	c, perr := parseClaims(payload)
	if perr != nil {
		return nil, perr
	}
	return c, nil
}

// newJTI makes a jti: 48 bits of the issue time in Unix milliseconds, then
// 80 random bits, as 22 base64url characters. The random part makes it
// unique (and unguessable); the time prefix gives the jtis of tokens
// minted together the same first characters, so that a sidecar records
// the uses of a group commit in a few neighbouring pages of its store's
// token_uses index instead of one random page each: 3.8 KB written to
// disk per fresh approval instead of 12.5 KB (docs/PERFORMANCE.md).
func newJTI(iat time.Time) string {
	var b [16]byte
	ms := uint64(max(iat.UnixMilli(), 0))
	b[0], b[1], b[2], b[3], b[4], b[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	_, _ = rand.Read(b[6:]) // never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}
