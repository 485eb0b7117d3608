package checkpoint_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/checkpoint"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// keyFiles writes a private JWK and its public JWKS, as m1 keys gen does.
func keyFiles(t *testing.T, alg, kid string) (private, public string) {
	t.Helper()
	k, err := approval.GenerateKey(alg, kid)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	priv, err := k.MarshalPrivateJWK()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := k.PublicJWKS()
	if err != nil {
		t.Fatal(err)
	}
	private, public = filepath.Join(dir, kid+".jwk"), filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(private, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(public, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return private, public
}

func TestTakeSignParse(t *testing.T) {
	ctx := context.Background()
	st, err := backend.Open(ctx, "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	for _, w := range []string{"w-a", "w-b"} {
		ev := []store.Event{{Kind: store.KindDecision, Time: now, DecisionID: "1"}, {Kind: store.KindDecision, Time: now, DecisionID: "2"}}
		store.NewChainer(w).Chain(ev)
		if err := st.AppendEvents(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	c, err := checkpoint.Take(ctx, st, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Heads) != 2 || c.Heads[0].Writer != "w-a" || c.Heads[0].Seq != 2 || c.Heads[1].Writer != "w-b" || c.Heads[1].Hash == "" {
		t.Fatalf("Take = %+v, want both chains at seq 2", c)
	}
	if one, err := checkpoint.Take(ctx, st, "w-b", now); err != nil || len(one.Heads) != 1 || one.Heads[0].Writer != "w-b" {
		t.Fatalf("Take(w-b) = %+v, %v", one, err)
	}

	priv, pub := keyFiles(t, approval.AlgEdDSA, "cp-1")
	key, err := checkpoint.LoadKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	signed, err := checkpoint.Sign(c, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, keysFile := range []string{pub, priv} { // the JWKS, or the private JWK's public half
		keys, err := checkpoint.LoadKeys(keysFile)
		if err != nil {
			t.Fatal(err)
		}
		got, err := checkpoint.Parse(signed, keys)
		if err != nil || len(got.Heads) != 2 || got.Heads[1] != c.Heads[1] || !got.Time.Equal(c.Time) {
			t.Fatalf("Parse(Sign(c)) = %+v, %v; want %+v", got, err, c)
		}
	}
	if name := checkpoint.Name(c, signed); !strings.HasSuffix(name, ".jws") || !strings.HasPrefix(name, c.Time.UTC().Format("20060102T150405")) {
		t.Fatalf("Name = %q", name)
	}

	keys, _ := checkpoint.LoadKeys(pub)
	_, otherPub := keyFiles(t, approval.AlgEdDSA, "cp-1") // same kid, another key
	other, _ := checkpoint.LoadKeys(otherPub)
	parts := strings.Split(string(signed), ".")
	forgedPayload := base64.RawURLEncoding.EncodeToString([]byte(`{"v":1,"time":"2026-01-01T00:00:00Z","heads":[]}`))
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"m1-audit-checkpoint+jws","kid":"cp-1"}`))
	for _, tc := range []struct {
		name string
		data string
		keys checkpoint.Keys
	}{
		{"another key, same kid", string(signed), other},
		{"payload edited", parts[0] + "." + forgedPayload + "." + parts[2], keys},
		{"alg none", noneHeader + "." + parts[1] + ".", keys},
		{"unknown kid", string(signed), checkpoint.Keys{"cp-2": keys["cp-1"]}},
		{"not a JWS", "hello", keys},
	} {
		if _, err := checkpoint.Parse([]byte(tc.data), tc.keys); err == nil {
			t.Errorf("Parse(%s) = nil error, want refused", tc.name)
		}
	}

	esPriv, _ := keyFiles(t, approval.AlgES256, "es-1")
	if _, err := checkpoint.LoadKey(esPriv); err == nil {
		t.Fatal("LoadKey(ES256 key) = nil error, want Ed25519 only")
	}
	if _, err := checkpoint.LoadKey(pub); err == nil {
		t.Fatal("LoadKey(public JWKS) = nil error, want a private key required")
	}
}

func TestReadDir(t *testing.T) {
	priv, pub := keyFiles(t, approval.AlgEdDSA, "cp-1")
	key, _ := checkpoint.LoadKey(priv)
	keys, _ := checkpoint.LoadKeys(pub)
	dir := t.TempDir()
	tg, _ := checkpoint.NewDir(dir)
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i, seq := range []int64{5, 9} {
		c := checkpoint.Checkpoint{Version: 1, Time: base.Add(time.Duration(i) * time.Hour), Heads: []checkpoint.Head{{Writer: "w", Seq: seq, Hash: "h"}}}
		signed, err := checkpoint.Sign(c, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := tg.Put(context.Background(), checkpoint.Name(c, signed), signed); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "zz-forged.jws"), []byte("a.b.c"), 0o600)
	os.WriteFile(filepath.Join(dir, "README"), []byte("not a checkpoint"), 0o600)
	good, bad, err := checkpoint.ReadDir(dir, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(good) != 2 || len(bad) != 1 || bad["zz-forged.jws"] == nil {
		t.Fatalf("ReadDir = %d good, bad %v; want 2 good and zz-forged.jws bad", len(good), bad)
	}
	hs := checkpoint.ByWriter(good)["w"]
	if len(hs) != 2 || hs[1].Seq != 9 || hs[1].File != good[1].File {
		t.Fatalf("ByWriter = %+v, want seq 5 then 9", hs)
	}
}
