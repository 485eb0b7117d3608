package cli

import (
	"strings"
	"testing"

	"github.com/m1-agent/m1/internal/store"
)

// TestApproveShowsTheOrigin: a proposal a sidecar filed for an MCP client
// (DESIGN §10) is shown before it is signed, by id too: the sidecar and
// pod it came from, the principal, the decision that filed it, beside its
// canonical arguments. The approval binds the principal (sub) and no run.
func TestApproveShowsTheOrigin(t *testing.T) {
	p := proposal(t, "prop_gw", "write_file", `{"path": "/tmp/x", "content": "hi\u001b[2J"}`, "write")
	p.RunID, p.Step, p.Reasoning = "", 0, ""
	p.Agent = "spiffe://example.org/ns/agents/sa/ide"
	p.Origin, p.Sidecar, p.Pod, p.DecisionID = store.OriginSidecar, "m1-authz/tools.example", "tools-7f9c\u202e", "dec_123"
	f := newFakeOrchestrator(t, p)
	env, jwks := approveEnv(t, f)
	r := m1With(t, env, "", "approve", "prop_gw")
	if r.code != exitOK {
		t.Fatalf("m1 approve prop_gw: %s", r)
	}
	for _, want := range []string{
		"proposal prop_gw (filed by a sidecar for an MCP client's call",
		"from:        sidecar m1-authz/tools.example, pod tools-7f9c\\u202e",
		"principal:   spiffe://example.org/ns/agents/sa/ide",
		"decision:    dec_123",
		"arguments (RFC 8785 canonical form, as hashed and signed):",
		`"content": "hi\u001b[2J"`,
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("m1 approve output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "run:") {
		t.Errorf("a sidecar's proposal has no run, but the output shows one:\n%s", r.stdout)
	}
	approvals, _ := f.received()
	if len(approvals) != 1 {
		t.Fatalf("orchestrator received %d approvals, want 1", len(approvals))
	}
	checkApproval(t, jwks, approvals[0].token, p, "alice")
}
