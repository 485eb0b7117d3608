package approval

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRoundTrip: GenerateKey → PublicJWKS → ParseJWKS → Mint → Verify for
// every asymmetric algorithm, also through the private JWK file; HS256
// through HMACKey and WithSecret.
func TestRoundTrip(t *testing.T) {
	for _, alg := range []string{AlgEdDSA, AlgES256, AlgRS256, AlgHS256} {
		t.Run(alg, func(t *testing.T) {
			var sk *SigningKey
			var ks *KeySet
			var err error
			if alg == AlgHS256 {
				if sk, err = HMACKey([]byte(testSecret)); err != nil {
					t.Fatal(err)
				}
				if ks, err = (*KeySet)(nil).WithSecret([]byte(testSecret)); err != nil {
					t.Fatal(err)
				}
			} else {
				sk = keys().byAlg[alg]
				if alg == AlgEdDSA { // exercise generation here too; the others are slow
					if sk, err = GenerateKey(alg, "fresh"); err != nil {
						t.Fatal(err)
					}
				}
				pub, err := sk.PublicJWKS()
				if err != nil {
					t.Fatalf("PublicJWKS: %v", err)
				}
				if ks, err = ParseJWKS(pub); err != nil {
					t.Fatalf("ParseJWKS(PublicJWKS()) = %v", err)
				}
			}
			v := newTestVerifier(t, func(o *VerifierOptions) { o.Keys = ks })

			// Through the private JWK file.
			priv, err := sk.MarshalPrivateJWK()
			if err != nil {
				t.Fatalf("MarshalPrivateJWK: %v", err)
			}
			path := filepath.Join(t.TempDir(), "key.jwk")
			if err := os.WriteFile(path, priv, 0o600); err != nil {
				t.Fatal(err)
			}
			loaded, err := LoadSigningKey(path)
			if err != nil {
				t.Fatalf("LoadSigningKey(MarshalPrivateJWK()) = %v", err)
			}
			if loaded.KID != sk.KID || loaded.Alg != sk.Alg {
				t.Errorf("LoadSigningKey: kid %q alg %q, want %q %q", loaded.KID, loaded.Alg, sk.KID, sk.Alg)
			}

			for name, key := range map[string]*SigningKey{"generated": sk, "loaded": loaded} {
				for _, want := range []Claims{approvalClaims(), grantClaims()} {
					tok := mint(t, key, want)
					got, err := v.Verify(tok)
					if err != nil {
						t.Fatalf("Verify(%s %s %s) = %s (%v), want ok", alg, name, want.Kind, code(err), err)
					}
					assertClaims(t, alg+" "+name, got, want)
					header, _, err := Inspect(tok)
					if err != nil {
						t.Fatal(err)
					}
					wantKID := any(sk.KID)
					if sk.KID == "" {
						wantKID = nil
					}
					if header["alg"] != alg || header["typ"] != TokenType || header["kid"] != wantKID {
						t.Errorf("header = %v, want alg %s, kid %v, typ %s", header, alg, wantKID, TokenType)
					}
				}
			}
		})
	}
}

func TestMintPayload(t *testing.T) {
	c := approvalClaims()
	tok := mint(t, keys().byAlg[AlgEdDSA], c)
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	want := `{"iss":"m1-cli","sub":"agent-7","aud":["tools.example"],"iat":1772366400,"nbf":1772366400,"exp":1772366700,"jti":"jti-1","act":{"sub":"alice@example.com"},"m1":{"kind":"approval","tool":"github.create_issue","args_sha256":"` + testArgsHash + `","run_id":"run-1","proposal_id":"prop-1"}}`
	if string(payload) != want {
		t.Errorf("Mint payload =\n%s\nwant\n%s", payload, want)
	}
	header, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if want := `{"alg":"EdDSA","kid":"ed","typ":"m1-approval+jwt"}`; string(header) != want {
		t.Errorf("Mint header = %s, want %s", header, want)
	}

	g := grantClaims()
	tok = mint(t, keys().byAlg[AlgHS256], g)
	payload, _ = base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	want = `{"iss":"m1-cli","sub":"agent-7","aud":["tools.example"],"iat":1772366400,"nbf":1772366400,"exp":1772366700,"jti":"jti-g","m1":{"kind":"grant","tools":["github.get_issue","search.*"],"max_uses":3}}`
	if string(payload) != want {
		t.Errorf("Mint grant payload =\n%s\nwant\n%s", payload, want)
	}
	header, _ = base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
	if want := `{"alg":"HS256","typ":"m1-approval+jwt"}`; string(header) != want {
		t.Errorf("Mint HS256 header = %s, want %s", header, want)
	}
}

func TestMintDefaults(t *testing.T) {
	c := approvalClaims()
	c.ID, c.IssuedAt, c.NotBefore = "", time.Time{}, time.Time{}
	c.Expiry = time.Now().Add(time.Minute)
	before := time.Now().Unix()
	tok := mint(t, keys().byAlg[AlgEdDSA], c)
	_, p, err := Inspect(tok)
	if err != nil {
		t.Fatal(err)
	}
	jti, _ := p["jti"].(string)
	if raw, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(raw) != 16 {
		t.Errorf("default jti = %q, want 128 random bits in base64url", jti)
	}
	if iat := int64(p["iat"].(float64)); iat < before || iat > time.Now().Unix() || p["nbf"] != p["iat"] {
		t.Errorf("default iat %v, nbf %v; want now and iat", p["iat"], p["nbf"])
	}
	if tok2 := mint(t, keys().byAlg[AlgEdDSA], c); tok2 == tok {
		t.Errorf("two Mint calls with an empty ID gave the same token")
	}
}

func TestMintErrors(t *testing.T) {
	k := keys()
	ec384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  *SigningKey
		edit func(*Claims)
		want string
	}{
		{"nil key", nil, nil, "nil"},
		{"alg does not suit key", &SigningKey{KID: "x", Alg: AlgES256, Key: k.byAlg[AlgEdDSA].Key}, nil, "does not suit"},
		{"unknown alg", &SigningKey{KID: "x", Alg: "PS256", Key: k.byAlg[AlgRS256].Key}, nil, "PS256"},
		{"P-384 key", &SigningKey{KID: "x", Alg: AlgES256, Key: ec384}, nil, "P-384"},
		{"asymmetric without kid", &SigningKey{Alg: AlgEdDSA, Key: k.byAlg[AlgEdDSA].Key}, nil, "kid"},
		{"short secret", &SigningKey{Alg: AlgHS256, Secret: []byte("short")}, nil, "32 bytes"},
		{"no expiry", k.byAlg[AlgEdDSA], func(c *Claims) { c.Expiry = time.Time{} }, "Expiry"},
		{"no issuer", k.byAlg[AlgEdDSA], func(c *Claims) { c.Issuer = "" }, "iss"},
		{"no audience", k.byAlg[AlgEdDSA], func(c *Claims) { c.Audience = nil }, "aud"},
		{"no kind", k.byAlg[AlgEdDSA], func(c *Claims) { c.Kind = "" }, "m1.kind"},
		{"bad tool", k.byAlg[AlgEdDSA], func(c *Claims) { c.Tool = "a b" }, "m1.tool"},
		{"bad args hash", k.byAlg[AlgEdDSA], func(c *Claims) { c.ArgsSHA256 = "xyz" }, "args_sha256"},
		{"approval with tools", k.byAlg[AlgEdDSA], func(c *Claims) { c.Tools = []string{"a"} }, "m1.tools"},
		{"grant with bare *", k.byAlg[AlgEdDSA], func(c *Claims) { *c = grantClaims(); c.Tools = []string{"*"} }, `"*"`},
		{"grant without max uses", k.byAlg[AlgEdDSA], func(c *Claims) { *c = grantClaims(); c.MaxUses = 0 }, "max_uses"},
		{"time before 1970", k.byAlg[AlgEdDSA], func(c *Claims) { c.IssuedAt = time.Unix(-5, 0) }, "iat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := approvalClaims()
			if tt.edit != nil {
				tt.edit(&c)
			}
			tok, err := Mint(tt.key, c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Mint(%s) = %.20q, %v; want an error containing %q", tt.name, tok, err, tt.want)
			}
		})
	}
}

func TestGenerateKeyErrors(t *testing.T) {
	for _, alg := range []string{"HS256", "none", "ES384", ""} {
		if _, err := GenerateKey(alg, "k"); err == nil {
			t.Errorf("GenerateKey(%q) = ok, want an error", alg)
		}
	}
	hk, _ := HMACKey([]byte(testSecret))
	if _, err := hk.PublicJWKS(); err == nil {
		t.Errorf("PublicJWKS(HS256) = ok, want an error")
	}
	if _, err := HMACKey(make([]byte, 31)); err == nil {
		t.Errorf("HMACKey(31 bytes) = ok, want an error")
	}
}

func TestLoadSigningKeyErrors(t *testing.T) {
	k := keys()
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want string
	}{
		{"missing file", filepath.Join(dir, "nope"), "load signing key"},
		{"not JSON", write("garbage", "nope"), "load signing key"},
		{"public key", write("pub", jwkJSON(t, k.byAlg[AlgEdDSA].Key.Public(), "ed", "EdDSA", "sig")), "public key"},
		{"no kid", write("nokid", jwkJSON(t, k.byAlg[AlgES256].Key, "", "ES256", "sig")), "kid"},
		{"alg mismatch", write("mis", jwkJSON(t, k.byAlg[AlgRS256].Key, "r", "RS512", "sig")), "RS512"},
		{"short secret", write("short", `{"kty":"oct","k":"`+b64([]byte("short"))+`"}`), "32 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadSigningKey(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadSigningKey(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
	// A private JWK without alg gets the derived one.
	p := write("noalg", jwkJSON(t, k.byAlg[AlgES256].Key, "ec", "", ""))
	sk, err := LoadSigningKey(p)
	if err != nil || sk.Alg != AlgES256 {
		t.Fatalf("LoadSigningKey(no alg) = %+v, %v; want alg ES256", sk, err)
	}
}

func TestMarshalPrivateJWK(t *testing.T) {
	priv, err := keys().byAlg[AlgEdDSA].MarshalPrivateJWK()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(priv, &m); err != nil {
		t.Fatal(err)
	}
	if m["kid"] != "ed" || m["alg"] != AlgEdDSA || m["d"] == nil || m["crv"] != "Ed25519" {
		t.Errorf("MarshalPrivateJWK = %s, want an Ed25519 private JWK with kid ed and alg EdDSA", priv)
	}
	// It must not be accepted as a verification JWKS.
	if _, err := ParseJWKS([]byte(`{"keys":[` + string(priv) + `]}`)); err == nil {
		t.Errorf("ParseJWKS(private JWK) = ok, want an error")
	}
}

func TestInspect(t *testing.T) {
	tok := mintWith(t, AlgEdDSA, nil)
	tests := []struct {
		name                 string
		token                string
		wantHeader, wantBody bool
		wantErr              string
	}{
		{"minted", tok, true, true, ""},
		{"bearer", "Bearer " + tok + "\n", true, true, ""},
		{"two segments", tok[:strings.LastIndexByte(tok, '.')], false, false, "2 segments"},
		{"bad payload", strings.Split(tok, ".")[0] + ".!!!." + strings.Split(tok, ".")[2], true, false, "payload"},
		{"payload not JSON", strings.Split(tok, ".")[0] + "." + b64([]byte("nope")) + ".", true, false, "no signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, p, err := Inspect(tt.token)
			if (h != nil) != tt.wantHeader || (p != nil) != tt.wantBody {
				t.Errorf("Inspect(%s) = header %v, payload %v; want header %v, payload %v", tt.name, h != nil, p != nil, tt.wantHeader, tt.wantBody)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Inspect(%s) error = %v, want %q", tt.name, err, tt.wantErr)
			}
		})
	}
	_, p, _ := Inspect(tok)
	if m1, _ := p["m1"].(map[string]any); m1["tool"] != "github.create_issue" || p["exp"] != float64(t0.Add(5*time.Minute).Unix()) {
		t.Errorf("Inspect payload = %v", p)
	}
}

// TestNewJTI: 22 base64url characters, unique, and in the order of their
// issue times (so that the uses of tokens minted together are stored
// together).
func TestNewJTI(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC)
	seen := map[string]bool{}
	prev := ""
	for i := range 1000 {
		id := newJTI(t0.Add(time.Duration(i) * time.Millisecond))
		if len(id) != 22 {
			t.Fatalf("newJTI = %q: %d characters, want 22", id, len(id))
		}
		if _, err := base64.RawURLEncoding.DecodeString(id); err != nil {
			t.Fatalf("newJTI = %q: not base64url: %v", id, err)
		}
		if seen[id] {
			t.Fatalf("newJTI repeated %q", id)
		}
		seen[id] = true
		// base64url's alphabet is not in ASCII order: compare the bytes.
		if prev != "" {
			a, _ := base64.RawURLEncoding.DecodeString(prev)
			b, _ := base64.RawURLEncoding.DecodeString(id)
			if string(a[:6]) >= string(b[:6]) {
				t.Fatalf("newJTI at a later millisecond sorts before the earlier one: %x, %x", a[:6], b[:6])
			}
		}
		prev = id
	}
	if a, b := newJTI(t0), newJTI(t0); a == b {
		t.Fatalf("two jtis of one millisecond are equal: %s", a)
	}
}
