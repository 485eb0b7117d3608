// Package checkpoint signs the heads of the audit trail's hash chains and
// keeps them where the store's operator cannot rewrite them (DESIGN §9). A
// hash chain shows an edit, an insertion or a deletion in its middle, but
// not its newest events deleted from the end; a checkpoint taken earlier,
// signed with a key held outside the store and written once to storage that
// never overwrites, shows that too: a chain that now ends before a head it
// was seen to hold was cut short.
//
// A checkpoint is a JWS (compact, EdDSA over Ed25519, typ
// "m1-audit-checkpoint+jws", kid of the key) whose payload is the JSON of
// Checkpoint. Take reads the heads from a store; Sign and Parse sign and
// verify; a Target (a directory, an HTTP PUT endpoint) stores it under a
// name that sorts by time, and refuses to overwrite; ReadDir reads a
// directory of them back.
package checkpoint

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Type is the JWS typ header of a checkpoint.
const Type = "m1-audit-checkpoint+jws"

// Ext ends every checkpoint file's name.
const Ext = ".jws"

// Version is the payload version Sign writes and Parse accepts.
const Version = 1

// Head is one chain's head as the store held it: its writer, the Seq and
// Hash of its last event (or of the prune checkpoint a fully pruned chain
// keeps).
type Head struct {
	Writer string `json:"writer"`
	Seq    int64  `json:"seq"`
	Hash   string `json:"hash"`
}

// Checkpoint says: at Time, these chains held these heads.
type Checkpoint struct {
	Version int       `json:"v"`
	Time    time.Time `json:"time"`
	Heads   []Head    `json:"heads"`
}

// Source is the part of store.Store a checkpoint is taken from.
type Source interface {
	Chains(ctx context.Context, fn func(writer string) error) error
	LastSeq(ctx context.Context, writer string) (seq int64, hash string, err error)
}

// Take reads the head of every chain (only writer's when writer is not
// "") from src, at now.
func Take(ctx context.Context, src Source, writer string, now time.Time) (Checkpoint, error) {
	c := Checkpoint{Version: Version, Time: now.UTC().Truncate(time.Microsecond), Heads: []Head{}}
	var writers []string
	if writer != "" {
		writers = []string{writer}
	} else if err := src.Chains(ctx, func(w string) error { writers = append(writers, w); return nil }); err != nil {
		return c, fmt.Errorf("list chains: %w", err)
	}
	for _, w := range writers {
		seq, hash, err := src.LastSeq(ctx, w)
		if err != nil {
			return c, fmt.Errorf("head of chain %q: %w", w, err)
		}
		if seq == 0 {
			continue // no event stored yet
		}
		c.Heads = append(c.Heads, Head{Writer: w, Seq: seq, Hash: hash})
	}
	return c, nil
}

// Key is an Ed25519 private signing key and its kid.
type Key struct {
	KID     string
	Private ed25519.PrivateKey
}

// LoadKey reads a private Ed25519 JWK file, as `m1 keys gen` writes it
// (alg EdDSA, with a kid). Any other key is an error.
func LoadKey(path string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("load checkpoint key: %w", err)
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err != nil {
		return Key{}, fmt.Errorf("load checkpoint key %q: %w", path, err)
	}
	priv, ok := jwk.Key.(ed25519.PrivateKey)
	switch {
	case !ok:
		return Key{}, fmt.Errorf("load checkpoint key %q: want a private Ed25519 (OKP) JWK, got %T", path, jwk.Key)
	case jwk.KeyID == "":
		return Key{}, fmt.Errorf("load checkpoint key %q: the key has no kid", path)
	}
	return Key{KID: jwk.KeyID, Private: priv}, nil
}

// Sign returns c as a compact JWS signed with k.
func Sign(c Checkpoint, k Key) ([]byte, error) {
	if len(k.Private) != ed25519.PrivateKeySize || k.KID == "" {
		return nil, errors.New("sign checkpoint: an Ed25519 private key with a kid is required")
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: k.Private},
		(&jose.SignerOptions{}).WithType(Type).WithHeader("kid", k.KID))
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return []byte(s), nil
}

// Keys are the public keys checkpoints are verified with, by kid.
type Keys map[string]ed25519.PublicKey

// LoadKeys reads the verification keys: a JWKS file ({"keys": […]}) or a
// single JWK, public or private (its public half is used). Only Ed25519
// keys with a kid are taken; a file with none is an error.
func LoadKeys(path string) (Keys, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load checkpoint keys: %w", err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err != nil || len(set.Keys) == 0 {
		var one jose.JSONWebKey
		if err := one.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("load checkpoint keys %q: neither a JWKS nor a JWK: %w", path, err)
		}
		set.Keys = []jose.JSONWebKey{one}
	}
	keys := Keys{}
	for _, k := range set.Keys {
		var pub ed25519.PublicKey
		switch key := k.Key.(type) {
		case ed25519.PublicKey:
			pub = key
		case ed25519.PrivateKey:
			pub = key.Public().(ed25519.PublicKey)
		default:
			continue
		}
		if k.KeyID != "" {
			keys[k.KeyID] = pub
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("load checkpoint keys %q: no Ed25519 key with a kid", path)
	}
	return keys, nil
}

// Parse verifies a signed checkpoint with keys and returns it. The
// signature must be EdDSA by a key of keys (by kid), typ Type, version
// Version. With nil keys the signature is not verified (the rest is):
// such a checkpoint can show a chain cut short or rewritten, never prove
// one intact.
func Parse(data []byte, keys Keys) (Checkpoint, error) {
	var c Checkpoint
	jws, err := jose.ParseSigned(strings.TrimSpace(string(data)), []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return c, fmt.Errorf("not a signed checkpoint: %w", err)
	}
	if len(jws.Signatures) != 1 {
		return c, errors.New("not a signed checkpoint: want exactly one signature")
	}
	h := jws.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != Type {
		return c, fmt.Errorf("typ %q, want %q", typ, Type)
	}
	var payload []byte
	if keys == nil {
		payload = jws.UnsafePayloadWithoutVerification()
	} else {
		pub, ok := keys[h.KeyID]
		if !ok {
			return c, fmt.Errorf("signed by an unknown key (kid %q)", h.KeyID)
		}
		if payload, err = jws.Verify(pub); err != nil {
			return c, fmt.Errorf("bad signature (kid %q): %w", h.KeyID, err)
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("payload: %w", err)
	}
	if c.Version != Version {
		return c, fmt.Errorf("version %d, want %d", c.Version, Version)
	}
	for _, h := range c.Heads {
		if h.Writer == "" || h.Seq < 1 || h.Hash == "" {
			return c, fmt.Errorf("head %+v: writer, seq and hash required", h)
		}
	}
	return c, nil
}

// Name is the name a signed checkpoint is stored under: its time (so that
// names sort by time) and a digest of its bytes (so that two checkpoints
// never share one), e.g. "20260301T120000.000000Z-1a2b3c4d5e6f.jws".
func Name(c Checkpoint, signed []byte) string {
	sum := sha256.Sum256(signed)
	return c.Time.UTC().Format("20060102T150405.000000Z") + "-" + hex.EncodeToString(sum[:6]) + Ext
}
