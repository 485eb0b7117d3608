package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
)

// m1With runs the command line with env as the whole environment and stdin.
func m1With(t *testing.T, env map[string]string, stdin string, args ...string) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &cmdIO{
		stdin:  strings.NewReader(stdin),
		stdout: &out,
		stderr: &errOut,
		lookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
	})
	return runResult{code, out.String(), errOut.String()}
}

// keysGen runs m1 keys gen --json in dir and returns its result.
func keysGen(t *testing.T, dir string, args ...string) keysGenResult {
	t.Helper()
	r := m1With(t, nil, "", append([]string{"keys", "gen", "--json", "--out", dir}, args...)...)
	if r.code != exitOK {
		t.Fatalf("m1 keys gen %q: %s", args, r)
	}
	var res keysGenResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("m1 keys gen --json output %q: %v", r.stdout, err)
	}
	return res
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestKeysGen(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantAlg string
		wantKID string // regexp
	}{
		{"EdDSA by default", nil, nil, approval.AlgEdDSA, `^eddsa-\d{8}-[0-9a-f]{6}$`},
		{"ES256", []string{"--alg", "ES256"}, nil, approval.AlgES256, `^es256-\d{8}-[0-9a-f]{6}$`},
		{"RS256 with a kid", []string{"--alg", "RS256", "--kid", "ops-2026.1"}, nil, approval.AlgRS256, `^ops-2026\.1$`},
		{"alg from M1_JWT_ALGORITHM", nil, map[string]string{"M1_JWT_ALGORITHM": "ES256"}, approval.AlgES256, `^es256-`},
		{"flag beats M1_JWT_ALGORITHM", []string{"--alg", "EdDSA"}, map[string]string{"M1_JWT_ALGORITHM": "ES256"}, approval.AlgEdDSA, `^eddsa-`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "keys")
			r := m1With(t, tt.env, "", append([]string{"keys", "gen", "--json", "--out", dir}, tt.args...)...)
			if r.code != exitOK {
				t.Fatalf("m1 keys gen: %s", r)
			}
			var res keysGenResult
			if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
				t.Fatalf("--json output %q: %v", r.stdout, err)
			}
			if res.Alg != tt.wantAlg || !regexp.MustCompile(tt.wantKID).MatchString(res.KID) {
				t.Errorf("keys gen = alg %s kid %q, want %s and kid matching %s", res.Alg, res.KID, tt.wantAlg, tt.wantKID)
			}
			if want := filepath.Join(dir, res.KID+".jwk"); res.PrivateKey != want {
				t.Errorf("private key at %s, want %s", res.PrivateKey, want)
			}
			if m := fileMode(t, res.PrivateKey); m != 0o600 {
				t.Errorf("private key mode = %v, want 0600", m)
			}
			if m := fileMode(t, res.JWKS); m != 0o644 {
				t.Errorf("jwks.json mode = %v, want 0644", m)
			}
			if m := fileMode(t, dir); m != 0o700 {
				t.Errorf("key directory mode = %v, want 0700", m)
			}
			key, err := approval.LoadSigningKey(res.PrivateKey)
			if err != nil {
				t.Fatalf("LoadSigningKey: %v", err)
			}
			if key.KID != res.KID || key.Alg != tt.wantAlg {
				t.Errorf("private key kid, alg = %q, %s, want %q, %s", key.KID, key.Alg, res.KID, tt.wantAlg)
			}
			ks, err := approval.LoadJWKS(res.JWKS)
			if err != nil {
				t.Fatalf("LoadJWKS: %v", err)
			}
			if got := ks.KIDs(); !slices.Equal(got, []string{res.KID}) {
				t.Errorf("jwks kids = %q, want [%q]", got, res.KID)
			}
			// The pair works: a token minted with the private key verifies
			// with the public set.
			verifyWith(t, key, ks)
		})
	}
}

// verifyWith mints an approval with key and verifies it against ks.
func verifyWith(t *testing.T, key *approval.SigningKey, ks *approval.KeySet) {
	t.Helper()
	now := time.Now()
	token, err := approval.Mint(key, approval.Claims{
		Issuer: "m1-cli", Subject: "agent", Audience: []string{"tools"},
		IssuedAt: now, Expiry: now.Add(time.Minute),
		Kind: approval.KindApproval, Tool: "t", ArgsSHA256: strings.Repeat("0", 64),
	})
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: ks, Audience: "tools", CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(token); err != nil {
		t.Errorf("Verify(token of %s) = %v, want ok", key.KID, err)
	}
}

func TestKeysGenRotation(t *testing.T) {
	dir := t.TempDir()
	first := keysGen(t, dir, "--kid", "k1")
	second := keysGen(t, dir, "--kid", "k2", "--alg", "ES256")
	if !slices.Equal(second.KIDs, []string{"k1", "k2"}) {
		t.Fatalf("after the second keys gen, kids = %q, want [k1 k2]", second.KIDs)
	}
	ks, err := approval.LoadJWKS(second.JWKS)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{first.PrivateKey, second.PrivateKey} {
		key, err := approval.LoadSigningKey(path)
		if err != nil {
			t.Fatal(err)
		}
		verifyWith(t, key, ks) // old and new keys both verify during a rotation
	}

	third := keysGen(t, dir, "--kid", "k3", "--replace")
	if !slices.Equal(third.KIDs, []string{"k3"}) {
		t.Errorf("keys gen --replace: kids = %q, want [k3]", third.KIDs)
	}
	if _, err := os.Stat(first.PrivateKey); err != nil {
		t.Errorf("keys gen --replace removed an old private key: %v", err)
	}
}

func TestKeysGenRefusals(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(t *testing.T, dir string) // before the command
		args       []string
		wantCode   int
		wantStderr string
		check      func(t *testing.T, dir string) // after the command
	}{
		{
			name:       "existing kid",
			setup:      func(t *testing.T, dir string) { keysGen(t, dir, "--kid", "k1") },
			args:       []string{"--kid", "k1"},
			wantCode:   exitError,
			wantStderr: "--force",
			check: func(t *testing.T, dir string) {
				ks, err := approval.LoadJWKS(filepath.Join(dir, "jwks.json"))
				if err != nil || ks.Len() != 1 {
					t.Errorf("jwks.json after a refused keys gen: %d keys, %v; want the one old key", ks.Len(), err)
				}
			},
		},
		{
			name: "existing private key file, not in the set",
			setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "k1.jwk"), []byte("precious"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			args:       []string{"--kid", "k1"},
			wantCode:   exitError,
			wantStderr: "exists",
			check: func(t *testing.T, dir string) {
				if b, _ := os.ReadFile(filepath.Join(dir, "k1.jwk")); string(b) != "precious" {
					t.Errorf("existing private key overwritten without --force: %q", b)
				}
				if _, err := os.Stat(filepath.Join(dir, "jwks.json")); err == nil {
					t.Errorf("jwks.json written although the private key was refused")
				}
			},
		},
		{
			name: "--force replaces the key, with mode 0600",
			setup: func(t *testing.T, dir string) {
				keysGen(t, dir, "--kid", "k1")
				keysGen(t, dir, "--kid", "k2")
				if err := os.Chmod(filepath.Join(dir, "k1.jwk"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			args:     []string{"--kid", "k1", "--force"},
			wantCode: exitOK,
			check: func(t *testing.T, dir string) {
				if m := fileMode(t, filepath.Join(dir, "k1.jwk")); m != 0o600 {
					t.Errorf("private key mode after --force = %v, want 0600", m)
				}
				ks, err := approval.LoadJWKS(filepath.Join(dir, "jwks.json"))
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(ks.KIDs(), []string{"k1", "k2"}) {
					t.Errorf("kids after --force = %q, want [k1 k2]", ks.KIDs())
				}
				key, err := approval.LoadSigningKey(filepath.Join(dir, "k1.jwk"))
				if err != nil {
					t.Fatal(err)
				}
				verifyWith(t, key, ks) // the set holds the new k1, not the old
			},
		},
		{
			name: "malformed existing jwks.json",
			setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "jwks.json"), []byte("{"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			args:       []string{"--kid", "k1"},
			wantCode:   exitError,
			wantStderr: "--replace",
			check: func(t *testing.T, dir string) {
				if _, err := os.Stat(filepath.Join(dir, "k1.jwk")); err == nil {
					t.Errorf("private key written although jwks.json could not be updated")
				}
			},
		},
		{
			name:       "HS256",
			args:       []string{"--alg", "HS256"},
			wantCode:   exitError,
			wantStderr: "M1_JWT_SECRET",
		},
		{
			name:       "unknown alg",
			args:       []string{"--alg", "PS256"},
			wantCode:   exitError,
			wantStderr: `"PS256"`,
		},
		{
			name:       "kid that is a path",
			args:       []string{"--kid", "../k1"},
			wantCode:   exitError,
			wantStderr: "--kid",
		},
		{
			name:       "hidden file kid",
			args:       []string{"--kid", ".k1"},
			wantCode:   exitError,
			wantStderr: "--kid",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			r := m1With(t, nil, "", append([]string{"keys", "gen", "--out", dir}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Fatalf("m1 keys gen %q: exit %d, want %d\n%s", tt.args, r.code, tt.wantCode, r)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 keys gen %q: stderr lacks %q\n%s", tt.args, tt.wantStderr, r)
			}
			if tt.check != nil {
				tt.check(t, dir)
			}
			if ents, _ := os.ReadDir(dir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), ".jwks.json") }) {
				t.Errorf("temporary file left in %s", dir)
			}
		})
	}
}

func TestKeysGenHumanOutput(t *testing.T) {
	dir := t.TempDir()
	r := m1With(t, nil, "", "keys", "gen", "--out", dir, "--kid", "k1")
	if r.code != exitOK {
		t.Fatal(r)
	}
	for _, want := range []string{"kid          k1 (EdDSA)", filepath.Join(dir, "k1.jwk") + " (mode 0600", "(1 key: k1;"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("m1 keys gen output lacks %q:\n%s", want, r.stdout)
		}
	}
}
