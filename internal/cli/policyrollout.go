package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/store"
)

const policySignDescription = `Sign the bundle in DIR with OPA's bundle signing code, as
'opa build --signing-key' does: every file of the bundle is hashed into a
JWT signed with the private key (RS256, ES256/384/512 or EdDSA, from the
key), written as .signatures.json. A sidecar with
M1_POLICY_VERIFICATION_KEY set to the public key accepts the bundle, and
refuses it once any file changes.

With --out, write a signed bundle tarball (.tar.gz) for a bundle server;
with --signatures, write DIR/.signatures.json in place, for a directory or
Git source (commit it with the bundle).

Exit status: 0 signed, 2 error.`

func runPolicySign(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("policy sign", "m1 policy sign DIR --key PRIVATE.pem (--out BUNDLE.tar.gz | --signatures)", policySignDescription, nil)
	keyFile := fs.String("key", "", "PEM private key `file` (PKCS#1, PKCS#8 or SEC 1)")
	keyID := fs.String("key-id", "default", "key `id` named in the signature (kid)")
	out := fs.String("out", "", "write a signed .tar.gz bundle to `file`")
	inPlace := fs.Bool("signatures", false, "write DIR/.signatures.json in place")
	if code, ok := parse(fs, c, args, 1, 1); !ok {
		return code
	}
	if *keyFile == "" || (*out == "") == !*inPlace {
		code, _ := usageError(fs, c, errors.New("--key and exactly one of --out and --signatures are required"))
		return code
	}
	dir := fs.Arg(0)
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		return fail(c, "policy sign", err)
	}
	files, err := policy.SignatureFiles(dir)
	if err != nil {
		return fail(c, "policy sign", err)
	}
	delete(files, ".signatures.json")
	// Refuse to sign what would not load.
	if _, err := policy.LoadDir(dir); err != nil {
		return fail(c, "policy sign", err)
	}
	sig, err := policy.Sign(files, key, *keyID)
	if err != nil {
		return fail(c, "policy sign", err)
	}
	if *inPlace {
		target := filepath.Join(dir, ".signatures.json")
		if err := os.WriteFile(target, sig, 0o644); err != nil {
			return fail(c, "policy sign", err)
		}
		fmt.Fprintf(c.stdout, "signed %d files: %s\n", len(files), target)
		return exitOK
	}
	files[".signatures.json"] = sig
	var buf bytes.Buffer
	if err := policy.WriteTarGz(&buf, files, time.Now()); err != nil {
		return fail(c, "policy sign", err)
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		return fail(c, "policy sign", err)
	}
	fmt.Fprintf(c.stdout, "signed %d files: %s\n", len(files)-1, *out)
	return exitOK
}

const policyReplayDescription = `Re-decide the decisions of the audit trail since T with the candidate
bundle (a directory or a .tar.gz) and list every one whose decision would
change: the rollout check before a bundle goes live.

T is, as for m1 audit export, an RFC 3339 time (2026-03-01T12:00:00Z) or
an age back from now: a Go duration (90m, 24h) or whole days, weeks or
years (7d, 2w, 1y; a year is 365 days).

Only decisions the policy made are replayed (allowed, policy_denied,
policy_error; a call refused by a hard check never reached the policy).
The policy input is rebuilt from the audit event: input.m1.kind
"tool_call", tool, args (kept only for tools the registry marks
"sensitive": false; denied calls never keep theirs), args_sha256,
principal, and, when the call carried an approval, a token with its jti
and sub, as an approval for this call. A decision is skipped when the
candidate reads what the audit does not keep: the arguments of a call
that did not keep them, or any input outside input.m1.

Exit status: 0 no decision would change, 1 some would, 2 error.`

// replayed is one decision that the candidate decides otherwise.
type replayed struct {
	Time        time.Time `json:"time"`
	DecisionID  string    `json:"decision_id"`
	Principal   string    `json:"principal"`
	Tool        string    `json:"tool"`
	Revision    string    `json:"revision"`
	Was         string    `json:"was"`
	WasReason   string    `json:"was_reason"`
	Now         string    `json:"now"`
	NowReason   string    `json:"now_reason"`
	NowHTTPCode int       `json:"now_status,omitempty"`
}

type replayReport struct {
	Candidate string         `json:"candidate_revision"`
	Since     time.Time      `json:"since"`
	Replayed  int            `json:"replayed"`
	Changed   []replayed     `json:"changed"`
	Skipped   map[string]int `json:"skipped"`
}

func runPolicyReplay(ctx context.Context, c *cmdIO, args []string) int {
	env := auditEnv()
	env["path"] = "M1_POLICY_PATH"
	fs := newFlagSet("policy replay", "m1 policy replay BUNDLE [--since T] [--db URL] [--json]", policyReplayDescription, env)
	since := fs.String("since", "24h", "replay the decisions at or after `T`: an RFC 3339 time, or an age such as 24h or 7d")
	path := fs.String("path", policy.DefaultPath, "decision `path` in the bundle")
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	sf := addStoreFlags(fs)
	if code, ok := parse(fs, c, args, 1, 1); !ok {
		return code
	}
	now := time.Now()
	from, err := parseWhen(*since, now)
	switch {
	case err != nil:
		code, _ := usageError(fs, c, fmt.Errorf("--since %w", err))
		return code
	case !from.Before(now):
		code, _ := usageError(fs, c, fmt.Errorf("--since must be in the past, not %s", from.UTC().Format(time.RFC3339)))
		return code
	}
	b, err := readCandidate(fs.Arg(0))
	if err != nil {
		return fail(c, "policy replay", err)
	}
	engine, err := source.Prepare(ctx, b, policy.Options{Path: *path, Timeout: time.Second}, false)
	if err != nil {
		return fail(c, "policy replay", err)
	}
	st, err := sf.open(ctx)
	if err != nil {
		return fail(c, "policy replay", err)
	}
	defer st.Close()

	rep := replayReport{Candidate: engine.Revision(), Since: from.UTC(), Changed: []replayed{}, Skipped: map[string]int{}}
	needs := engine.Needs()
	outside := needs.All || needs.Attributes || needs.ParsedPath || needs.ParsedQuery || needs.ParsedBody || needs.TruncatedBody || needs.Version
	readsArgs := needs.M1Paths == nil
	for _, p := range needs.M1Paths {
		readsArgs = readsArgs || p[0] == "args"
	}
	err = st.Events(ctx, store.Filter{Since: rep.Since}, func(e store.Event) error {
		if e.Kind != store.KindDecision {
			return nil
		}
		switch {
		case e.Tool == "" || (e.Reason != "ok" && e.Reason != "policy_denied" && e.Reason != "policy_error"):
			rep.Skipped["not decided by the policy"]++
			return nil
		case outside:
			rep.Skipped["candidate reads input outside input.m1"]++
			return nil
		case readsArgs && e.Args == nil:
			rep.Skipped["arguments not kept"]++
			return nil
		}
		in, err := replayInput(e)
		if err != nil {
			rep.Skipped["arguments not readable"]++
			return nil
		}
		rep.Replayed++
		now, nowReason, status := "deny", "", 0
		d, err := engine.Eval(ctx, in)
		switch {
		case err != nil:
			nowReason = "policy_error: " + err.Error()
		case d.Allowed:
			now = "allow"
		default:
			nowReason, status = d.Reason, d.HTTPStatus
			if nowReason == "" {
				nowReason = "denied by policy"
			}
		}
		if now != e.Decision {
			rep.Changed = append(rep.Changed, replayed{
				Time: e.Time, DecisionID: e.DecisionID, Principal: e.Principal, Tool: e.Tool, Revision: e.PolicyRevision,
				Was: e.Decision, WasReason: cmpOr(e.Detail, e.Reason), Now: now, NowReason: nowReason, NowHTTPCode: status,
			})
		}
		return nil
	})
	if err != nil {
		return fail(c, "policy replay", err)
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fail(c, "policy replay", err)
		}
	} else {
		printReplay(c, &rep)
	}
	if len(rep.Changed) > 0 {
		return exitDeny
	}
	return exitOK
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func printReplay(c *cmdIO, rep *replayReport) {
	if len(rep.Changed) > 0 {
		tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tDECISION\tPRINCIPAL\tTOOL\tWAS\tNOW\tREASON")
		for _, r := range rep.Changed {
			reason := r.NowReason
			if r.Now == "allow" {
				reason = "was: " + r.WasReason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), r.DecisionID, r.Principal, r.Tool, r.Was, r.Now, reason)
		}
		_ = tw.Flush()
		fmt.Fprintln(c.stdout)
	}
	var skipped []string
	for _, k := range slices.Sorted(maps.Keys(rep.Skipped)) {
		skipped = append(skipped, fmt.Sprintf("%s: %d", k, rep.Skipped[k]))
	}
	fmt.Fprintf(c.stdout, "candidate %s: %d decisions since %s replayed, %d would change", rep.Candidate, rep.Replayed, rep.Since.Format(time.RFC3339), len(rep.Changed))
	if len(skipped) > 0 {
		fmt.Fprintf(c.stdout, "; skipped (%s)", strings.Join(skipped, ", "))
	}
	fmt.Fprintln(c.stdout)
}

// readCandidate reads a bundle directory or a .tar.gz file.
func readCandidate(p string) (*policy.Bundle, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return policy.LoadDir(p)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return policy.ReadTarGz(raw, policy.ReadOptions{})
}

// replayInput rebuilds the policy input of a tool call from its audit event.
func replayInput(e store.Event) (ast.Value, error) {
	args := ast.Value(ast.NewObject())
	if e.Args != nil {
		v, err := ast.ValueFromReader(bytes.NewReader(e.Args))
		if err != nil {
			return nil, err
		}
		args = v
	}
	token := ast.NullTerm()
	if e.TokenJTI != "" {
		token = ast.ObjectTerm(
			ast.Item(ast.StringTerm("jti"), ast.StringTerm(e.TokenJTI)),
			ast.Item(ast.StringTerm("sub"), ast.StringTerm(e.Principal)),
			ast.Item(ast.StringTerm("m1"), ast.ObjectTerm(
				ast.Item(ast.StringTerm("kind"), ast.StringTerm("approval")),
				ast.Item(ast.StringTerm("tool"), ast.StringTerm(e.Tool)),
				ast.Item(ast.StringTerm("args_sha256"), ast.StringTerm(e.ArgsSHA256)),
			)),
		)
	}
	m1 := ast.ObjectTerm(
		ast.Item(ast.StringTerm("kind"), ast.StringTerm("tool_call")),
		ast.Item(ast.StringTerm("tool"), ast.StringTerm(e.Tool)),
		ast.Item(ast.StringTerm("args"), ast.NewTerm(args)),
		ast.Item(ast.StringTerm("args_sha256"), ast.StringTerm(e.ArgsSHA256)),
		ast.Item(ast.StringTerm("principal"), ast.StringTerm(e.Principal)),
		ast.Item(ast.StringTerm("token"), token),
		ast.Item(ast.StringTerm("request"), ast.ObjectTerm(
			ast.Item(ast.StringTerm("method"), ast.StringTerm("POST")),
			ast.Item(ast.StringTerm("host"), ast.StringTerm("")),
			ast.Item(ast.StringTerm("path"), ast.StringTerm("/tools/"+e.Tool)),
		)),
	)
	return ast.NewObject(ast.Item(ast.StringTerm("m1"), m1)), nil
}
