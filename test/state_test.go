package test

import (
	"net/http"
	"path/filepath"
	"testing"

	"github.com/m1-agent/m1/internal/approval"
)

// Without Redis the promises of DESIGN §7 hold across a restart of the
// binary on one data directory: a replayed approval is refused, a grant's
// use count goes on, and a revoked subject stays revoked.
func TestStateSurvivesRestart(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	k := genKey(t, "EdDSA", "kid-state")
	keys := []*approval.SigningKey{k}
	a, _ := startWithKeys(t, keys, "--data-dir", dataDir)
	approvalTok, grantTok := mint(t, k), mint(t, k, grantOf(2, "write_file"))
	expect(t, "approval", a.check(t, writeReq(t, approvalTok)), allow)
	expect(t, "grant, use 1 of 2", a.check(t, writeReq(t, grantTok)), allow)
	a.admin(t, "POST", revocationAPI, `{"sub":"agent-rogue"}`, http.StatusCreated)
	a.stopClean(t)

	b, _ := startWithKeys(t, keys, "--data-dir", dataDir)
	expect(t, "approval after the restart", b.check(t, writeReq(t, approvalTok)), replayed)
	expect(t, "grant, use 2 of 2 after the restart", b.check(t, writeReq(t, grantTok)), allow)
	expect(t, "grant, use 3 of 2", b.check(t, writeReq(t, grantTok)), exhausted)
	expect(t, "new token of the revoked sub after the restart", b.check(t, writeReq(t, mint(t, k, withSub("agent-rogue")))), revoked)
	expect(t, "a new approval", b.check(t, writeReq(t, mint(t, k))), allow)
}
