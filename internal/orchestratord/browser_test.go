package orchestratord

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/gateway"
	"github.com/m1-agent/m1/internal/testenv"
	"github.com/m1-agent/m1/toolcall"
)

// TestProposalPageInChromium opens the link an MCP client shows for a
// call held at the gateway, #/proposals/<id> on the orchestrator, in a new
// headless Chromium tab without the admin token, as the person it is
// shown to would: the page asks for the token, then shows the proposal's
// origin, principal, canonical arguments and the m1 approve command, all
// as text (the principal and the arguments are the agent's), under the
// page's CSP, without a console error.
func TestProposalPageInChromium(t *testing.T) {
	_, jwks := operatorKey(t, "ops-1")
	o := testOptions(t, jwks)
	o.PlanFile, o.AdminToken = "", "admin-secret"
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop(context.Background()) })
	base := "http://" + s.Addr().String() + "/"

	const evil = `<img/src=x/onerror=alert(1)>`
	args := `{"path":"notes.txt","content":"<script>alert(2)</script>"}`
	sum, _ := toolcall.ArgsSHA256("write_file", []byte(args))
	c, err := gateway.NewClient(gateway.ClientOptions{BaseURL: "http://" + s.Addr().String(), Token: "admin-secret", Timeout: 10 * time.Second,
		Sidecar: "m1-authz/tools.example", Pod: "tools-7f9c"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.File(context.Background(), gateway.FileRequest{Principal: evil, Tool: "write_file", Args: json.RawMessage(args), ArgsSHA256: sum, DecisionID: "dec-1"})
	if err != nil {
		t.Fatal(err)
	}

	b := testenv.StartBrowser(t)
	b.Ignore("401") // the API answers 401 while the tab has no token
	text := func(id string) string { return b.Eval(t, `document.getElementById('`+id+`').textContent`) }

	link := base + "#/proposals/" + a.ProposalID
	b.Navigate(t, link)
	b.Wait(t, "the page asks for the token", `!document.getElementById('login').hidden`)
	b.Eval(t, `document.getElementById('token-input').value = 'admin-secret'; setTimeout(() => document.getElementById('token-save').click(), 0); ''`)
	b.Wait(t, "the proposal is shown", `(document.getElementById('pv-id') || {}).textContent === '`+a.ProposalID+`' && !!(document.getElementById('pv-args') || {}).textContent`)

	for id, want := range map[string]string{
		"pv-principal": evil,
		"pv-tool":      "write_file",
		"pv-origin":    "sidecar m1-authz/tools.example (pod tools-7f9c)",
		"pv-decision":  "dec-1",
		"pv-sha":       sum,
		"pv-approve":   "m1 approve " + a.ProposalID,
		"pv-status":    "pending",
	} {
		if got := text(id); got != want {
			t.Errorf("#%s = %q, want %q", id, got, want)
		}
	}
	if got := text("pv-args"); !strings.Contains(got, `"content": "<script>alert(2)</script>"`) || !strings.Contains(got, `"path": "notes.txt"`) {
		t.Errorf("#pv-args = %q, want the canonical arguments as text", got)
	}
	if got := b.Eval(t, `String(document.querySelectorAll('img, #proposal-view script').length)`); got != "0" {
		t.Errorf("%s elements made from the agent's text, want none", got)
	}
	if got := b.Eval(t, `location.href`); got != link {
		t.Errorf("location.href = %q, want %q", got, link)
	}

	// Back on the dashboard, the proposal waits with its age and a link.
	b.Navigate(t, base+"#/")
	b.Wait(t, "the pending list", `(document.getElementById('pending-total') || {}).textContent === '1'`)
	if got := b.Eval(t, `document.querySelector('#pending a').getAttribute('href')`); got != "#/proposals/"+a.ProposalID {
		t.Errorf("pending link = %q, want #/proposals/%s", got, a.ProposalID)
	}
	if got := text("pending"); !strings.Contains(got, evil) || !strings.Contains(got, "tools-7f9c") {
		t.Errorf("pending table = %q, want the principal and the pod as text", got)
	}
	for _, p := range b.Problems() {
		t.Errorf("browser: %s", p)
	}
}
