package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
)

const grantDescription = `Sign a grant: a pre-authorization for an agent to call the tools matching
--tools (exact names, or prefix* with a non-empty prefix; never a bare *),
with any arguments the policy accepts, at most --max-uses times, until
--ttl from now. The token is printed on stdout and nothing else, so that
GRANT=$(m1 grant …) works; a summary goes to stderr.

A grant is a token like an approval (DESIGN §4) and the sidecars refuse
one that lives longer than their M1_APPROVAL_TOKEN_TTL_MINUTES; so does
this command when that variable (or --max-ttl-minutes) is set. It is the
same code as 'm1 token mint --grant'. Revoke a grant before it expires
with 'm1 revoke --jti JTI'.

Exit status: 0 signed, 2 error.`

func runGrant(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("grant",
		"m1 grant --agent AGENT --tools a,b,c* --max-uses N [--ttl DURATION] [--key FILE | --alg HS256 | --secret-env NAME] [--aud AUD] [--run RUN_ID] [flags]",
		grantDescription, signingEnv("operator"))
	var sf signing
	sf.register(fs, "operator", "the granting `operator`, recorded as act.sub")
	agent := fs.String("agent", "", "the `agent` (the token's sub) the grant is for")
	tools := fs.String("tools", "", "comma-separated tool `patterns`: exact names or prefix*")
	maxUses := fs.Int("max-uses", 0, "the `number` of calls the grant allows")
	runID := fs.String("run", "", "orchestrator run `id` the grant belongs to (m1.run_id)")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		code, _ := usageError(fs, c, fmt.Errorf(format, a...))
		return code
	}
	if err := sf.check(); err != nil {
		return usageErr("%v", err)
	}
	switch {
	case *agent == "":
		return usageErr("--agent is required")
	case *tools == "":
		return usageErr("--tools is required")
	case !isSet(fs, "max-uses"):
		return usageErr("--max-uses is required")
	}
	patterns, uses, err := grantScope(*tools, *maxUses)
	if err != nil {
		return usageErr("%v", err)
	}
	audience, err := sf.audience()
	if err != nil {
		return usageErr("%v", err)
	}
	key, err := sf.key(c)
	if err != nil {
		return keyError(fs, c, err)
	}
	token, claims, err := sf.sign(key, approval.Claims{
		Kind:     approval.KindGrant,
		Issuer:   sf.iss,
		Subject:  *agent,
		Actor:    sf.actor,
		Audience: audience,
		Tools:    patterns,
		MaxUses:  uses,
		RunID:    *runID,
	}, 0, time.Now())
	if err != nil {
		return fail(c, "grant", err)
	}
	fmt.Fprintln(c.stdout, token)

	w := c.stderr
	fmt.Fprintf(w, "grant for agent %s\n", escapeTerminal(claims.Subject))
	fmt.Fprintf(w, "  %-10s %s\n", "tools:", escapeTerminal(strings.Join(claims.Tools, ", ")))
	fmt.Fprintf(w, "  %-10s %d\n", "max uses:", claims.MaxUses)
	exp := claims.Expiry.UTC().Format(time.RFC3339)
	fmt.Fprintf(w, "  %-10s %s (%v from now)\n", "expires:", exp, sf.ttl.Truncate(time.Second))
	fmt.Fprintf(w, "  %-10s %s\n", "audience:", escapeTerminal(strings.Join(claims.Audience, ", ")))
	actor := claims.Actor
	if actor == "" {
		actor = "(none)"
	}
	fmt.Fprintf(w, "  %-10s %s, operator %s\n", "issuer:", escapeTerminal(claims.Issuer), escapeTerminal(actor))
	if claims.RunID != "" {
		fmt.Fprintf(w, "  %-10s %s\n", "run:", escapeTerminal(claims.RunID))
	}
	fmt.Fprintf(w, "  %-10s %s (revoke with: m1 revoke --jti %s)\n", "jti:", claims.ID, claims.ID)
	return exitOK
}
