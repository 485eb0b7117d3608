package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/policies"
)

// defaultOrchestratorURL is m1-orchestrator's HTTP API on its default
// address.
const defaultOrchestratorURL = "http://127.0.0.1:9193"

// autoRiskActor is the operator (act.sub) an --auto-risk approval records.
const autoRiskActor = "auto-risk:"

const approveDescription = `Review the orchestrator's pending proposals and approve them: an approval
is an approval token (DESIGN §4) signed here, with the operator's key, for
exactly the proposed call (its tool and the SHA-256 of its arguments'
RFC 8785 form), and posted to the orchestrator, which dispatches the call
with it. The key never leaves this machine.

Three ways to run it:

  m1 approve                   interactive: each pending proposal is shown
                               (run, agent, tool, risk, the canonical
                               arguments exactly as hashed, args_sha256,
                               the planner's reasoning, expiry, the run's
                               cost so far); choose approve, reject (with a
                               reason) or skip. Needs a terminal; Esc or
                               Ctrl-C stops, leaving the rest pending.
  m1 approve ID [ID...]        approve those proposals without asking.
  m1 approve --auto-risk read  approve, without asking, every pending
                               proposal whose risk is exactly that one, with
                               operator auto-risk:read; each is logged on
                               stderr. A risk other than read also needs
                               --yes.

A proposal a sidecar filed for an MCP client's call (DESIGN §10) shows
where it came from instead of a run: the sidecar and pod, the principal
(the approval's sub), the decision that filed it; by id too, before it is
signed. Approved, it is not dispatched: the orchestrator holds the
approval until the client retries the same call, which then runs once.

Before signing, the arguments are checked as the sidecar will check them
and hashed here; a proposal whose args_sha256 is not the hash of its
arguments is refused (nothing is signed): the operator signs what was
shown. Everything that came from the agent or the planner is shown
escaped (control characters, ANSI escape sequences, bidi controls and
other invisible characters as \x1b, \u202e, …), never interpreted.

The orchestrator is --orchestrator ($M1_ORCHESTRATOR_URL), called with the
bearer token $M1_ADMIN_TOKEN when that is set; an https:// URL is verified
against --ca-file ($M1_CA_FILE). The token's sub is the
proposal's agent, aud --aud ($M1_AUDIENCE), act.sub --operator ($USER); it
is valid for --ttl, which must not exceed the sidecars'
$M1_APPROVAL_TOKEN_TTL_MINUTES (--max-ttl-minutes) when that is set. It
is signed as by 'm1 token mint': --key ($M1_SIGNING_KEY), or for HS256
(--alg or $M1_JWT_ALGORITHM) the secret $M1_JWT_SECRET.

When the sidecar refuses an approval with state_reset (it was issued
before the sidecar's shared state was reset, so the tool did not run and
the proposal is pending again), m1 approve waits the retry-after the
orchestrator passes on, at most twice --clock-skew ($M1_CLOCK_SKEW), and
signs and posts a new approval of the same call once. Ctrl-C stops the
wait; the proposal stays pending.

Exit status: 0 done, 1 an approval or rejection was refused by the
orchestrator (or still refused with state_reset after the retry), or a call
approved did not succeed (the sidecar denied it, or the tool failed), 2 error
(bad flags, a proposal that cannot be approved or is not pending,
orchestrator unreachable or answering with an error).`

func runApprove(ctx context.Context, c *cmdIO, args []string) int {
	env := signingEnv("operator")
	env["orchestrator"] = "M1_ORCHESTRATOR_URL"
	env["policy-dir"] = "M1_POLICY_DIR"
	env["clock-skew"] = "M1_CLOCK_SKEW"
	fs := newFlagSet("approve",
		"m1 approve [ID...] [--auto-risk RISK [--yes]] [--orchestrator URL] [--key FILE | --alg HS256 | --secret-env NAME] [--aud AUD] [flags]",
		approveDescription, env)
	var sf signing
	sf.register(fs, "operator", "the approving `operator`, recorded as act.sub")
	var of orchestratorFlags
	of.register(fs)
	autoRisk := fs.String("auto-risk", "", "approve without asking every pending proposal of exactly this `risk` (read, write, …) in the tool registry")
	policyDir := fs.String("policy-dir", "", "policy bundle whose m1/tools/data.json is the tool registry that says each tool's risk (empty = the embedded default)")
	yes := fs.Bool("yes", false, "with --auto-risk other than read: approve such calls unseen")
	skew := fs.Duration("clock-skew", 30*time.Second, "the sidecars' clock `skew`: after a state_reset deny, wait at most twice this before approving again")
	if code, ok := parse(fs, c, args, 0, -1); !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		code, _ := usageError(fs, c, fmt.Errorf(format, a...))
		return code
	}
	ids := fs.Args()
	if err := sf.check(); err != nil {
		return usageErr("%v", err)
	}
	switch {
	case *autoRisk != "" && len(ids) > 0:
		return usageErr("give proposal IDs or --auto-risk, not both")
	case *yes && *autoRisk == "":
		return usageErr("--yes goes with --auto-risk")
	case *autoRisk != "" && *autoRisk != "read" && !*yes:
		return usageErr("--auto-risk %s approves calls nobody looks at; add --yes if that is meant", *autoRisk)
	case *autoRisk == "" && sf.actor == "":
		return usageErr("--operator (or $USER) is required: the approval records who approved")
	case *skew < 0:
		return usageErr("--clock-skew must not be negative")
	}
	interactive := *autoRisk == "" && len(ids) == 0
	if interactive && !(isTerminal(c.stdin) && isTerminal(c.stdout)) {
		return fail(c, "approve", errors.New("interactive review needs a terminal on stdin and stdout; "+
			"approve by id with 'm1 approve ID…', or by risk with 'm1 approve --auto-risk read'"))
	}
	audience, err := sf.audience()
	if err != nil {
		return usageErr("%v", err)
	}
	client, err := of.client(c)
	if err != nil {
		return usageErr("%v", err)
	}
	key, err := sf.key(c)
	if err != nil {
		return keyError(fs, c, err)
	}
	registry, err := loadRegistry(*policyDir)
	if err != nil {
		return fail(c, "approve", err)
	}
	a := &approver{c: c, client: client, key: key, sign: &sf, audience: audience, timeout: of.timeout, now: time.Now, sleep: sleepCtx,
		maxResetWait: 2 * *skew, registry: registry}
	switch {
	case *autoRisk != "":
		a.byRisk(ctx, *autoRisk)
	case len(ids) > 0:
		a.byID(ctx, ids)
	default:
		a.interactive(ctx)
	}
	return a.tally.code
}

// orchestratorFlags are the flags of the commands that call the
// orchestrator's API.
type orchestratorFlags struct {
	url     string
	timeout time.Duration
	tls     tlsFlags
}

func (o *orchestratorFlags) register(fs *flagSet) {
	fs.StringVar(&o.url, "orchestrator", defaultOrchestratorURL, "base `URL` of m1-orchestrator's HTTP API")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "time limit of each request to the orchestrator (an approval waits for the tool call)")
	o.tls.register(fs, false)
}

// client returns the API client; the bearer token is $M1_ADMIN_TOKEN (not
// a flag, which ps would show). The error is a usage error.
func (o *orchestratorFlags) client(c *cmdIO) (*orchestrator.Client, error) {
	u, err := url.Parse(o.url)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--orchestrator %q: want http://host:port or https://host:port", o.url)
	}
	if o.timeout <= 0 {
		return nil, errors.New("--timeout must be positive")
	}
	hc, err := o.tls.httpClient()
	if err != nil {
		return nil, err
	}
	hc.CheckRedirect = nil // as before: the orchestrator client follows redirects
	token, _ := c.lookupEnv("M1_ADMIN_TOKEN")
	return &orchestrator.Client{BaseURL: o.url, Token: token, HTTP: hc}, nil
}

// tally counts what m1 approve did and keeps the exit status.
type tally struct {
	approved, rejected, skipped int
	callsFailed                 int // approved, then denied by the sidecar or failed at the tool
	refused                     int // by the orchestrator
	failed                      int // errors
	code                        int
}

// note raises the exit status to code.
func (t *tally) note(code int) { t.code = max(t.code, code) }

func (t *tally) String() string {
	s := fmt.Sprintf("%d approved, %d rejected, %d skipped", t.approved, t.rejected, t.skipped)
	if t.callsFailed > 0 {
		s += fmt.Sprintf(", %d approved calls did not succeed", t.callsFailed)
	}
	if t.refused > 0 {
		s += fmt.Sprintf(", %d refused by the orchestrator", t.refused)
	}
	if t.failed > 0 {
		s += fmt.Sprintf(", %d failed", t.failed)
	}
	return s
}

// approver signs approvals and posts decisions for m1 approve.
type approver struct {
	c        *cmdIO
	client   *orchestrator.Client
	key      *approval.SigningKey
	sign     *signing
	audience []string
	timeout  time.Duration
	now      func() time.Time
	sleep    func(ctx context.Context, d time.Duration) error // sleepCtx; tests record the wait
	// maxResetWait is the longest m1 approve waits, after a state_reset
	// deny, to approve again: twice --clock-skew (a sidecar starts its new
	// epoch at most one skew ahead, DESIGN §7).
	maxResetWait time.Duration
	registry     orchestrator.Registry // the operator's own: risks are not taken from the orchestrator
	tally        tally
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loadRegistry reads the tool registry from a policy bundle directory, or
// the embedded default bundle.
func loadRegistry(dir string) (orchestrator.Registry, error) {
	fsys := policies.FS()
	if dir != "" {
		fsys = os.DirFS(dir)
	}
	// The endpoint is the orchestrator's business; any valid URL will do.
	return orchestrator.LoadRegistry(fsys, "http://127.0.0.1")
}

// riskOf is the tool's risk in the operator's registry, and whether the
// proposal says the same: a compromised orchestrator must not get a write
// auto-approved by calling it a read.
func (a *approver) riskOf(p store.Proposal) (risk string, agrees bool) {
	spec, ok := a.registry[p.Tool]
	if !ok {
		return "", false
	}
	return spec.Risk, spec.Risk == p.Risk
}

// errNotApprovable is wrapped by the error for a proposal that must not be
// approved (its arguments, its hash, its status); nothing was signed.
var errNotApprovable = errors.New("not approved")

// errStateReset is wrapped by the error for an approval the sidecar
// refused with state_reset and m1 approve did not, or could not, replace:
// the proposal is pending, for a new approval.
var errStateReset = errors.New("refused by the sidecar with state_reset")

// approve signs an approval of p for operator and posts it. An error
// wrapping errNotApprovable means nothing was signed; an
// *orchestrator.APIError is the orchestrator's refusal.
//
// When the sidecar refuses the approval with state_reset (issued before
// its shared state was reset; the tool did not run and the proposal is
// pending again), approve waits the retry-after the orchestrator passes
// on, if it is at most maxResetWait, then signs a new approval, issued
// after the sidecar's new epoch, and posts it: once. An approval still so
// refused, or a longer wait, is an error wrapping errStateReset.
func (a *approver) approve(ctx context.Context, p store.Proposal, operator string) (orchestrator.Decided, error) {
	if p.Status != store.ProposalPending {
		return orchestrator.Decided{}, fmt.Errorf("%w: it is %s, not pending", errNotApprovable, p.Status)
	}
	// The operator signs what was shown: the hash is computed here from
	// the arguments, and a proposal whose hash is not theirs is refused.
	if _, err := canonicalArgs(p); err != nil {
		return orchestrator.Decided{}, fmt.Errorf("%w: %w", errNotApprovable, err)
	}
	d, err := a.signAndPost(ctx, p, operator)
	if err != nil || !d.NeedsNewApproval() {
		return d, err
	}
	wait := time.Duration(d.RetryAfter) * time.Second
	if wait > a.maxResetWait {
		return d, fmt.Errorf("%w: the sidecar accepts a new approval in %v, later than twice --clock-skew; the proposal is pending: approve it again then", errStateReset, wait)
	}
	fmt.Fprintf(a.c.stderr, "m1 approve: proposal %s: the approval was refused by the sidecar with state_reset (issued before its shared state was reset; the tool did not run); approving again with a new token in %v\n",
		escapeTerminal(p.ID), wait)
	if err := a.sleep(ctx, wait); err != nil {
		return d, fmt.Errorf("%w: interrupted while waiting to approve again (%w); the proposal is pending", errStateReset, err)
	}
	d, err = a.signAndPost(ctx, p, operator)
	if err == nil && d.NeedsNewApproval() {
		return d, fmt.Errorf("%w again, with a token issued after the wait; the proposal is pending", errStateReset)
	}
	return d, err
}

// signAndPost signs an approval of p for operator, issued now, and posts
// it.
func (a *approver) signAndPost(ctx context.Context, p store.Proposal, operator string) (orchestrator.Decided, error) {
	token, _, err := a.sign.sign(a.key, approval.Claims{
		Kind:       approval.KindApproval,
		Issuer:     a.sign.iss,
		Subject:    p.Agent,
		Actor:      operator,
		Audience:   a.audience,
		Tool:       p.Tool,
		ArgsSHA256: p.ArgsSHA256,
		RunID:      p.RunID,
		ProposalID: p.ID,
	}, 0, a.now())
	if err != nil {
		return orchestrator.Decided{}, fmt.Errorf("%w: %w", errNotApprovable, err)
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return a.client.Approve(ctx, p.ID, token)
}

// reject posts a rejection of proposal id.
func (a *approver) reject(ctx context.Context, id, reason string) (orchestrator.Decided, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	return a.client.Reject(ctx, id, reason)
}

// pending lists the pending proposals.
func (a *approver) pending(ctx context.Context) ([]store.Proposal, error) {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	ps, err := a.client.Proposals(ctx, store.ProposalPending)
	if err != nil {
		return nil, fmt.Errorf("list pending proposals: %w", err)
	}
	return ps, nil
}

// report prints the outcome of an approval (approved) or a rejection and
// counts it; verb starts the line printed.
func (a *approver) report(approved bool, verb string, id string, d orchestrator.Decided, err error) {
	if err == nil {
		printDecided(a.c.stdout, verb, d)
		if approved {
			a.tally.approved++
			if tc := d.ToolCall; tc != nil && (tc.Status == store.CallFailed || tc.Status == store.CallDenied) {
				a.tally.callsFailed++
				a.tally.note(exitDeny)
			}
		} else {
			a.tally.rejected++
		}
		return
	}
	if refusal(err) {
		by := "refused by the orchestrator: "
		if errors.Is(err, errStateReset) {
			by = ""
		}
		fmt.Fprintf(a.c.stderr, "m1 approve: proposal %s: %s%s\n", escapeTerminal(id), by, escapeTerminal(err.Error()))
		a.tally.refused++
		a.tally.note(exitDeny)
		return
	}
	a.failed(fmt.Errorf("proposal %s: %w", id, err))
}

// failed reports an error and counts it.
func (a *approver) failed(err error) {
	fmt.Fprintf(a.c.stderr, "m1 approve: %s\n", escapeTerminal(err.Error()))
	a.tally.failed++
	a.tally.note(exitError)
}

// byID approves the proposals ids, without asking.
func (a *approver) byID(ctx context.Context, ids []string) {
	for _, id := range ids {
		fctx, cancel := context.WithTimeout(ctx, a.timeout)
		p, err := a.client.Proposal(fctx, id)
		cancel()
		if err != nil {
			a.failed(fmt.Errorf("get proposal %s: %w", id, err))
			continue
		}
		if p.Origin == store.OriginSidecar {
			// Shown before it is signed: where it came from, beside the
			// exact arguments the approval binds.
			risk, _ := a.riskOf(p)
			r := review{p: p, risk: risk}
			r.canon, r.err = canonicalArgs(p)
			r.print(a.c.stdout, a.now())
		}
		d, err := a.approve(ctx, p, a.sign.actor)
		a.report(true, "approved", id, d, err)
	}
	if len(ids) > 1 {
		fmt.Fprintln(a.c.stdout, a.tally.String())
	}
}

// byRisk approves every pending proposal of exactly risk, without asking,
// with operator auto-risk:<risk>.
func (a *approver) byRisk(ctx context.Context, risk string) {
	ps, err := a.pending(ctx)
	if err != nil {
		a.failed(err)
		return
	}
	others := 0
	for _, p := range ps {
		if p.Risk != risk {
			others++
			continue
		}
		if known, agrees := a.riskOf(p); !agrees {
			fmt.Fprintf(a.c.stderr, "m1 approve: proposal %s (tool %s) NOT auto-approved: the orchestrator says risk %s, the tool registry says %q\n",
				escapeTerminal(p.ID), escapeTerminal(p.Tool), escapeTerminal(p.Risk), escapeTerminal(known))
			a.tally.skipped++
			continue
		}
		d, err := a.approve(ctx, p, autoRiskActor+risk)
		if err == nil {
			fmt.Fprintf(a.c.stderr, "m1 approve: auto-approved (risk %s) proposal %s: run %s, agent %s, tool %s, args_sha256 %s\n",
				escapeTerminal(risk), escapeTerminal(p.ID), escapeTerminal(p.RunID), escapeTerminal(p.Agent), escapeTerminal(p.Tool), escapeTerminal(p.ArgsSHA256))
		}
		a.report(true, "auto-approved (risk "+escapeTerminal(risk)+")", p.ID, d, err)
	}
	fmt.Fprintln(a.c.stdout, a.tally.String())
	if others > 0 {
		fmt.Fprintf(a.c.stderr, "m1 approve: %d pending proposals of other risks left pending\n", others)
	}
}

// printDecided writes what came of an approval or rejection: the
// proposal's status and, after an approval, the tool call's status, HTTP
// status, decision id and a short preview of its result. All escaped.
func printDecided(w io.Writer, verb string, d orchestrator.Decided) {
	p := d.Proposal
	fmt.Fprintf(w, "%s proposal %s (tool %s, agent %s): %s\n", verb, escapeTerminal(p.ID), escapeTerminal(p.Tool), escapeTerminal(p.Agent), escapeTerminal(p.Status))
	tc := d.ToolCall
	if p.Reason != "" && (tc == nil || tc.Error != p.Reason) {
		fmt.Fprintf(w, "  reason: %s\n", escapeTerminal(p.Reason))
	}
	if p.Origin == store.OriginSidecar && p.Status == store.ProposalApproved {
		fmt.Fprintf(w, "  held for the MCP client's retry of the same call (principal %s), which runs it once; until %s\n",
			escapeTerminal(p.Agent), p.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if tc == nil {
		return
	}
	line := fmt.Sprintf("  tool call %s: %s", escapeTerminal(tc.ID), escapeTerminal(tc.Status))
	if tc.HTTPStatus != 0 {
		line += fmt.Sprintf(", HTTP %d", tc.HTTPStatus)
	}
	if tc.DecisionID != "" {
		line += ", decision " + escapeTerminal(tc.DecisionID)
	}
	fmt.Fprintln(w, line)
	if tc.Error != "" {
		fmt.Fprintf(w, "  error: %s\n", escapeTerminal(tc.Error))
	}
	if len(tc.Result) > 0 {
		fmt.Fprintf(w, "  result: %s\n", preview(tc.Result, resultPreviewLen))
	}
}

// resultPreviewLen is how many characters of a tool's result are shown.
const resultPreviewLen = 200

const rejectDescription = `Reject a pending proposal of the orchestrator (--orchestrator,
$M1_ORCHESTRATOR_URL, https:// verified against --ca-file, $M1_CA_FILE;
bearer $M1_ADMIN_TOKEN when set). The reason is required and is recorded
with the proposal.

Exit status: 0 rejected, 1 refused by the orchestrator (unknown proposal,
no longer pending, …), 2 error.`

func runReject(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("reject", "m1 reject ID --reason TEXT [--orchestrator URL]", rejectDescription,
		map[string]string{"orchestrator": "M1_ORCHESTRATOR_URL"})
	var of orchestratorFlags
	of.register(fs)
	reason := fs.String("reason", "", "why the proposal is rejected (required)")
	if code, ok := parse(fs, c, args, 1, 1); !ok {
		return code
	}
	if strings.TrimSpace(*reason) == "" {
		code, _ := usageError(fs, c, errors.New("--reason is required: say why the call must not run"))
		return code
	}
	client, err := of.client(c)
	if err != nil {
		code, _ := usageError(fs, c, err)
		return code
	}
	id := fs.Arg(0)
	ctx, cancel := context.WithTimeout(ctx, of.timeout)
	defer cancel()
	d, err := client.Reject(ctx, id, strings.TrimSpace(*reason))
	if err != nil {
		if refusal(err) {
			fmt.Fprintf(c.stderr, "m1 reject: proposal %s: refused by the orchestrator: %s\n", escapeTerminal(id), escapeTerminal(err.Error()))
			return exitDeny
		}
		fmt.Fprintf(c.stderr, "m1 reject: proposal %s: %s\n", escapeTerminal(id), escapeTerminal(err.Error()))
		return exitError
	}
	printDecided(c.stdout, "rejected", d)
	return exitOK
}

// refusal reports whether err is the orchestrator refusing this decision
// (a token that does not fit, no such proposal, no longer pending), or the
// sidecar refusing the approval with state_reset: exit 1. Anything else (a
// wrong admin token, the store down, …) is an error: exit 2.
func refusal(err error) bool {
	if errors.Is(err, errStateReset) {
		return true
	}
	ae, ok := errors.AsType[*orchestrator.APIError](err)
	return ok && (ae.Status == http.StatusBadRequest || ae.Status == http.StatusNotFound || ae.Status == http.StatusConflict)
}
