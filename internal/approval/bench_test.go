package approval

import (
	"crypto/ed25519"
	"fmt"
	"strings"
	"testing"
)

// benchPool is the number of distinct tokens an uncached benchmark cycles
// through.
const benchPool = 64

// BenchmarkVerify measures Verify per algorithm on fresh tokens with the
// cache off (checks 1–7 every time); EdDSA-miss with the cache on and every
// call a miss (b.N distinct tokens minted beforehand), which adds hashing,
// lookup and insert; and cached, a cache hit (checks 3–7 only).
// Compare EdDSA with BenchmarkEd25519Verify: the target is ≥ 70% of its rate.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{AlgEdDSA, AlgES256, AlgRS256, AlgHS256} {
		b.Run(alg, func(b *testing.B) {
			v := newTestVerifier(b, func(o *VerifierOptions) { o.CacheSize = -1 })
			toks := benchTokens(b, alg, benchPool)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := v.Verify(toks[i%benchPool]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
	b.Run("EdDSA-miss", func(b *testing.B) {
		v := newTestVerifier(b, nil)
		toks := benchTokens(b, AlgEdDSA, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if _, err := v.Verify(toks[i]); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if n := v.signatureChecks.Load(); n != uint64(b.N) {
			b.Fatalf("%d signature checks for %d fresh tokens, want one each", n, b.N)
		}
	})
	b.Run("cached", func(b *testing.B) {
		v := newTestVerifier(b, nil)
		tok := mint(b, keys().byAlg[AlgEdDSA], grantClaims())
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := v.Verify(tok); err != nil {
				b.Fatal(err)
			}
		}
		if n := v.signatureChecks.Load(); n != 1 {
			b.Fatalf("%d signature checks for one cached token, want 1", n)
		}
	})
}

// benchTokens mints n distinct approvals with the alg's test key.
func benchTokens(b *testing.B, alg string, n int) []string {
	toks := make([]string, n)
	for i := range toks {
		toks[i] = mintWith(b, alg, func(c *Claims) { c.ID = fmt.Sprintf("bench-%d", i) })
	}
	return toks
}

// BenchmarkEd25519Verify is the baseline: bare ed25519.Verify of the
// signing inputs of the same benchPool tokens BenchmarkVerify/EdDSA uses
// (one-message verifies one of them over and over, which flatters the
// baseline: the variable-time scalar multiplication then sees one scalar).
func BenchmarkEd25519Verify(b *testing.B) {
	priv := keys().byAlg[AlgEdDSA].Key.(ed25519.PrivateKey)
	pub := priv.Public().(ed25519.PublicKey)
	msgs, sigs := make([][]byte, benchPool), make([][]byte, benchPool)
	for i, tok := range benchTokens(b, AlgEdDSA, benchPool) {
		last := strings.LastIndexByte(tok, '.')
		msgs[i] = []byte(tok[:last])
		sig, err := b64url.DecodeString(tok[last+1:])
		if err != nil {
			b.Fatal(err)
		}
		sigs[i] = sig
	}
	b.Run("pool", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if !ed25519.Verify(pub, msgs[i%benchPool], sigs[i%benchPool]) {
				b.Fatal("verify failed")
			}
			i++
		}
	})
	b.Run("one-message", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !ed25519.Verify(pub, msgs[0], sigs[0]) {
				b.Fatal("verify failed")
			}
		}
	})
}
