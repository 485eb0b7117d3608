package approval_test

import (
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/m1-agent/m1/internal/approval"
)

// An operator generates a key and mints an approval for one tool call; the
// sidecar verifies it with the public JWKS.
func Example() {
	// Operator: `m1 keys gen` and `m1 token mint`.
	key, err := approval.GenerateKey(approval.AlgEdDSA, "ops-2026")
	if err != nil {
		log.Fatal(err)
	}
	jwks, err := key.PublicJWKS() // the sidecar's M1_JWKS_FILE
	if err != nil {
		log.Fatal(err)
	}
	now := time.Now()
	token, err := approval.Mint(key, approval.Claims{
		Issuer:     "m1-cli",
		Subject:    "agent-7",
		Actor:      "alice@example.com",
		Audience:   []string{"tools.example"},
		IssuedAt:   now,
		Expiry:     now.Add(5 * time.Minute),
		Kind:       approval.KindApproval,
		Tool:       "github.create_issue",
		ArgsSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
	})
	if err != nil {
		log.Fatal(err)
	}

	// Sidecar.
	keys, err := approval.ParseJWKS(jwks)
	if err != nil {
		log.Fatal(err)
	}
	v, err := approval.NewVerifier(approval.VerifierOptions{Keys: keys, Audience: "tools.example"})
	if err != nil {
		log.Fatal(err)
	}
	claims, err := v.Verify(token)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(claims.Kind, claims.Tool, "approved by", claims.Actor, "for", claims.Subject)

	// Another service's sidecar refuses it.
	other, err := approval.NewVerifier(approval.VerifierOptions{Keys: keys, Audience: "billing.example"})
	if err != nil {
		log.Fatal(err)
	}
	_, err = other.Verify(token)
	fmt.Println(errors.Is(err, approval.ErrAudience), err)
	// Output:
	// approval github.create_issue approved by alice@example.com for agent-7
	// true audience_mismatch: aud does not contain "billing.example"
}
