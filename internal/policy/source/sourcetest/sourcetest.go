// Package sourcetest is the conformance suite of source.Loader: every
// policy source (a directory, an OPA bundle server, a Git repository) runs
// it against a real instance of its kind, so that they all follow one
// contract: what a Load returns, what ErrNotModified means, how a broken
// or badly signed bundle fails, and that one bundle has one revision
// whichever source served it.
package sourcetest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
)

// Fixture is one source under test: a place bundles are published to and
// a Loader that reads them.
type Fixture interface {
	// Publish makes files (bundle path -> content) the source's bundle,
	// replacing the last one; a Load started after it returns sees it.
	Publish(t *testing.T, files map[string]string)
	// Loader returns a new Loader of the source with read options o.
	Loader(t *testing.T, o policy.ReadOptions) source.Loader
}

// Unreachable is implemented by fixtures that can stop answering (a
// server that goes away); the suite then checks that Load fails, and that
// it recovers when the source is back.
type Unreachable interface {
	// Down makes the source unreachable until the returned func is called.
	Down(t *testing.T) (up func())
}

// Revisioned is implemented by sources that name a revision themselves
// (a Git commit id) when the bundle's .manifest does not.
type Revisioned interface {
	// Revision is the revision the source names for the last Publish.
	Revision(t *testing.T) string
}

// Policy is a minimal valid bundle's module.
const Policy = "package m1.authz\n\nimport rego.v1\n\ndefault decision := false\n\ndecision if input.m1.tool == \"read_file\"\n"

// Bundle returns a valid bundle's files, with v in its data so that two
// calls with different v are two revisions.
func Bundle(v string) map[string]string {
	return map[string]string{
		"authz.rego":         Policy,
		"m1/tools/data.json": `{"read_file": {"risk": "read", "requires_approval": false, "note": "` + v + `"}}`,
	}
}

// Run runs the suite; newFixture makes a fresh, empty source per subtest.
func Run(t *testing.T, newFixture func(t *testing.T) Fixture) {
	t.Run("LoadsBundle", func(t *testing.T) {
		f := newFixture(t)
		f.Publish(t, Bundle("one"))
		res := load(t, f.Loader(t, policy.ReadOptions{}), "")
		b := res.Bundle
		if b.Modules["authz.rego"] != Policy {
			t.Errorf("Load().Bundle.Modules = %v, want authz.rego with its source", b.Modules)
		}
		tools, _ := b.Data["m1"].(map[string]any)["tools"].(map[string]any)
		if tools["read_file"] == nil {
			t.Errorf("Load().Bundle.Data = %v, want data.m1.tools.read_file", b.Data)
		}
		if res.Tag == "" || b.Revision == "" {
			t.Errorf("Load() tag %q, revision %q; want both set", res.Tag, b.Revision)
		}
		if r, ok := f.(Revisioned); ok {
			if want := r.Revision(t); b.Revision != want {
				t.Errorf("Load().Bundle.Revision = %q, want the source's %q", b.Revision, want)
			}
		} else if want := hashRevision(t, Bundle("one")); b.Revision != want {
			t.Errorf("Load().Bundle.Revision = %q, want %q, the revision of the same files in a directory", b.Revision, want)
		}
		if _, err := policy.Prepare(context.Background(), b, policy.Options{}); err != nil {
			t.Errorf("Prepare(loaded bundle): %v", err)
		}
	})

	t.Run("NotModified", func(t *testing.T) {
		f := newFixture(t)
		f.Publish(t, Bundle("one"))
		l := f.Loader(t, policy.ReadOptions{})
		first := load(t, l, "")
		res, err := l.Load(context.Background(), first.Tag)
		switch {
		case errors.Is(err, source.ErrNotModified):
		case err != nil:
			t.Fatalf("Load(same tag) error = %v, want ErrNotModified or the same revision", err)
		case res.Bundle.Revision != first.Bundle.Revision:
			t.Errorf("Load(same tag) revision = %q, want %q (nothing changed)", res.Bundle.Revision, first.Bundle.Revision)
		}
	})

	t.Run("NewRevision", func(t *testing.T) {
		f := newFixture(t)
		f.Publish(t, Bundle("one"))
		l := f.Loader(t, policy.ReadOptions{})
		first := load(t, l, "")
		f.Publish(t, Bundle("two"))
		second := load(t, l, first.Tag)
		if second.Bundle.Revision == first.Bundle.Revision || second.Tag == first.Tag {
			t.Errorf("Load after a change: revision %q tag %q, want both other than the first's (%q, %q)",
				second.Bundle.Revision, second.Tag, first.Bundle.Revision, first.Tag)
		}
		got := second.Bundle.Data["m1"].(map[string]any)["tools"].(map[string]any)["read_file"].(map[string]any)["note"]
		if got != "two" {
			t.Errorf("Load after a change: data note = %v, want two", got)
		}
	})

	t.Run("ManifestRevision", func(t *testing.T) {
		f := newFixture(t)
		files := Bundle("one")
		files[".manifest"] = `{"revision": "v7-reviewed", "roots": [""]}`
		f.Publish(t, files)
		if got := load(t, f.Loader(t, policy.ReadOptions{}), "").Bundle.Revision; got != "v7-reviewed" {
			t.Errorf("Load().Bundle.Revision = %q, want the .manifest's v7-reviewed", got)
		}
	})

	// New files under an unchanged .manifest revision are loaded, not
	// taken as unchanged: the reloader must see them to refuse them.
	t.Run("SameRevisionNewFiles", func(t *testing.T) {
		f := newFixture(t)
		manifest := `{"revision": "v7-reviewed", "roots": [""]}`
		one, two := Bundle("one"), Bundle("two")
		one[".manifest"], two[".manifest"] = manifest, manifest
		f.Publish(t, one)
		l := f.Loader(t, policy.ReadOptions{})
		first := load(t, l, "")
		f.Publish(t, two)
		second := load(t, l, first.Tag)
		if second.Bundle.Revision != "v7-reviewed" || second.Bundle.Digest == "" || second.Bundle.Digest == first.Bundle.Digest {
			t.Errorf("Load after new files under one revision: revision %q, digest %q (first %q); want v7-reviewed and a new digest",
				second.Bundle.Revision, second.Bundle.Digest, first.Bundle.Digest)
		}
	})

	t.Run("Broken", func(t *testing.T) {
		for _, tt := range []struct {
			name  string
			files map[string]string
			want  string
		}{
			{"bad data.json", map[string]string{"authz.rego": Policy, "m1/tools/data.json": "{\"x\": "}, "m1/tools/data.json"},
			{"no policy", map[string]string{"README.md": "not a bundle"}, "no .rego modules"},
			{"bad manifest", map[string]string{"authz.rego": Policy, ".manifest": "{"}, ".manifest"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				f := newFixture(t)
				f.Publish(t, tt.files)
				_, err := f.Loader(t, policy.ReadOptions{}).Load(context.Background(), "")
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Load(%s) error = %v, want one mentioning %q", tt.name, err, tt.want)
				}
			})
		}
	})

	t.Run("Signed", func(t *testing.T) {
		pub, priv := keyPair(t)
		_, otherPriv := keyPair(t)
		verify, err := policy.NewVerification(pub)
		if err != nil {
			t.Fatal(err)
		}
		signed := func(files map[string]string, key []byte) map[string]string {
			sig, err := policy.Sign(bytesOf(files), key, "")
			if err != nil {
				t.Fatal(err)
			}
			out := maps.Clone(files)
			out[".signatures.json"] = string(sig)
			return out
		}
		tampered := signed(Bundle("one"), priv)
		tampered["authz.rego"] = strings.Replace(Policy, "read_file", "run_command", 1)
		for _, tt := range []struct {
			name  string
			files map[string]string
			ok    bool
		}{
			{"signed", signed(Bundle("one"), priv), true},
			{"signed with a README", signed(map[string]string{"authz.rego": Policy, "README.md": "# policies"}, priv), true},
			{"unsigned", Bundle("one"), false},
			{"tampered", tampered, false},
			{"file added after signing", func() map[string]string {
				m := signed(Bundle("one"), priv)
				m["extra.rego"] = "package extra\n"
				return m
			}(), false},
			{"wrong key", signed(Bundle("one"), otherPriv), false},
		} {
			t.Run(tt.name, func(t *testing.T) {
				f := newFixture(t)
				f.Publish(t, tt.files)
				res, err := f.Loader(t, policy.ReadOptions{Verification: verify}).Load(context.Background(), "")
				switch {
				case tt.ok && err != nil:
					t.Errorf("Load(%s) error = %v, want the bundle", tt.name, err)
				case tt.ok && res.Bundle.Modules["authz.rego"] == "":
					t.Errorf("Load(%s) bundle has no authz.rego", tt.name)
				case !tt.ok && !errors.Is(err, policy.ErrSignature):
					t.Errorf("Load(%s) error = %v, want ErrSignature", tt.name, err)
				}
			})
		}
	})

	t.Run("Cancelled", func(t *testing.T) {
		f := newFixture(t)
		f.Publish(t, Bundle("one"))
		l := f.Loader(t, policy.ReadOptions{})
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		// A source may finish a cheap local read; it must not hang or
		// return a half-read bundle.
		if res, err := l.Load(ctx, ""); err == nil && res.Bundle == nil {
			t.Errorf("Load(cancelled) = no bundle and no error")
		}
	})

	t.Run("Unreachable", func(t *testing.T) {
		f := newFixture(t)
		u, ok := f.(Unreachable)
		if !ok {
			t.Skip("the source cannot be made unreachable")
		}
		f.Publish(t, Bundle("one"))
		l := f.Loader(t, policy.ReadOptions{})
		first := load(t, l, "")
		up := u.Down(t)
		if _, err := l.Load(context.Background(), first.Tag); err == nil || errors.Is(err, source.ErrNotModified) {
			t.Errorf("Load(unreachable) error = %v, want an error", err)
		}
		up()
		f.Publish(t, Bundle("two"))
		if got := load(t, l, first.Tag); got.Bundle.Revision == first.Bundle.Revision {
			t.Errorf("Load after the source is back: revision unchanged %q", got.Bundle.Revision)
		}
	})
}

func load(t *testing.T, l source.Loader, tag string) source.Result {
	t.Helper()
	res, err := l.Load(context.Background(), tag)
	if err != nil {
		t.Fatalf("Load(%q): %v", tag, err)
	}
	if res.Bundle == nil {
		t.Fatalf("Load(%q) returned no bundle", tag)
	}
	return res
}

func bytesOf(files map[string]string) map[string][]byte {
	m := make(map[string][]byte, len(files))
	for k, v := range files {
		m[k] = []byte(v)
	}
	return m
}

// hashRevision is the revision of files read from a directory.
func hashRevision(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := WriteDir(t, t.TempDir(), files)
	b, err := policy.ReadDir(dir, policy.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b.Revision
}

// KeyPair returns a fresh Ed25519 key pair as PEM (public, private).
func KeyPair(t testing.TB) (pub, priv []byte) { return keyPair(t) }

func keyPair(t testing.TB) (pub, priv []byte) {
	t.Helper()
	p, s, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := x509.MarshalPKIXPublicKey(p)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := x509.MarshalPKCS8PrivateKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pb}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: sb})
}

// WriteDir replaces the contents of dir with files and returns dir.
func WriteDir(t testing.TB, dir string, files map[string]string) string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == ".git" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	for p, content := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
