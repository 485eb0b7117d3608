package cli

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/toolcall"
)

const tokenUsage = `Usage:
  m1 token mint (--key FILE | --alg HS256 | --secret-env NAME) --sub AGENT --aud AUD --tool TOOL [--args JSON] [flags]
  m1 token mint (--key FILE | --alg HS256 | --secret-env NAME) --sub AGENT --aud AUD --grant --tools a,b,c* --max-uses N [flags]
  m1 token inspect TOKEN|- [--jwks FILE] [--aud AUD] [--tool TOOL [--args JSON]]

Commands:
  mint     sign an approval for one tool call, or a grant of a bounded number of calls
  inspect  decode a token; with --jwks, verify it as a sidecar would

Run 'm1 token <command> -h' for its flags.
`

func runToken(ctx context.Context, c *cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, tokenUsage)
		return exitError
	}
	switch args[0] {
	case "mint":
		return runTokenMint(ctx, c, args[1:])
	case "inspect":
		return runTokenInspect(ctx, c, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, tokenUsage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "m1 token: unknown command %q\n\n%s", args[0], tokenUsage)
	return exitError
}

// argsSHA256 is toolcall.ArgsSHA256 (the sidecar's own checks and hash of a
// call's arguments) with an error that says what to fix.
func argsSHA256(tool string, args []byte) (string, error) {
	sum, err := toolcall.ArgsSHA256(tool, args)
	if rerr, ok := errors.AsType[*toolcall.Error](err); ok {
		if rerr.Code == deny.BadPath {
			return "", errors.New(rerr.Reason)
		}
		return "", fmt.Errorf("arguments rejected as the sidecar would reject them: %s: %s", rerr.Code, rerr.Reason)
	}
	return sum, err
}

// checkTool refuses a --tool the sidecar would refuse, as the flag's error
// (argsSHA256's would be taken for one of the arguments).
func checkTool(tool string) error {
	if !toolcall.ValidName(tool) {
		return fmt.Errorf("--tool: tool %q: want 1 to 128 of [A-Za-z0-9_.-]", tool)
	}
	return nil
}

const tokenMintDescription = `Sign an approval token and print it on stdout (and nothing else, so that
TOKEN=$(m1 token mint …) works).

An approval (the default) allows exactly one call: --tool with --args
(default {}), bound by the SHA-256 of the arguments' JCS form, which is what
the sidecar computes from the request. Arguments the sidecar would refuse
(not an object, duplicate member names, numbers a double cannot represent
exactly, …) are refused here too. A grant (--grant) allows calls of the
tools matching --tools (exact names or prefix*, never a bare *), with any
arguments the policy accepts, at most --max-uses times.

The algorithm is --alg, else $M1_JWT_ALGORITHM, else EdDSA. EdDSA, ES256
and RS256 sign with a private JWK from 'm1 keys gen' (--key); when the
algorithm is set, the key must be of it. HS256 signs with the shared secret
in $M1_JWT_SECRET, the sidecars' own, or in the variable named by
--secret-env (never from a flag value); --secret-env alone implies HS256. A
secret under 32 bytes is refused, as m1-authz refuses it. The token is valid for --ttl from now; the
sidecars refuse a lifetime longer than their
M1_APPROVAL_TOKEN_TTL_MINUTES, and so does this command when
--max-ttl-minutes (or that variable) is set. --nbf-skew backdates iat and
nbf (exp stays iat + ttl) for sidecars whose clocks run behind by more than
their M1_CLOCK_SKEW.

Exit status: 0 minted, 2 error.`

func runTokenMint(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("token mint",
		"m1 token mint (--key FILE | --alg HS256 | --secret-env NAME) --sub AGENT --aud AUD (--tool TOOL [--args JSON] | --grant --tools LIST --max-uses N) [flags]",
		tokenMintDescription, signingEnv("act"))
	var sf signing
	sf.register(fs, "act", "the approving `operator` (act.sub)")
	tool := fs.String("tool", "", "approval: the `tool` the call may run")
	toolArgs := fs.String("args", "{}", "approval: the call's `arguments`, a JSON object, @FILE, or @- for stdin")
	grant := fs.Bool("grant", false, "mint a grant (--tools, --max-uses) instead of an approval")
	tools := fs.String("tools", "", "grant: comma-separated tool `patterns`, exact names or prefix*")
	maxUses := fs.Int("max-uses", 0, "grant: the `number` of calls it allows")
	sub := fs.String("sub", "", "the `agent` (principal) the token is for")
	runID := fs.String("run-id", "", "orchestrator run `id` (m1.run_id)")
	proposalID := fs.String("proposal-id", "", "orchestrator proposal `id` (m1.proposal_id)")
	jti := fs.String("jti", "", "token `id` (default: 128 random bits)")
	nbfSkew := fs.Duration("nbf-skew", 0, "backdate iat and nbf by this `duration`, whole seconds")
	asJSON := fs.Bool("json", false, "print {token, jti, exp, args_sha256} as one JSON object")
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
	case *sub == "":
		return usageErr("--sub is required")
	case *nbfSkew < 0 || *nbfSkew >= sf.ttl:
		return usageErr("--nbf-skew %v: must be at least 0 and less than --ttl", *nbfSkew)
	case *nbfSkew%time.Second != 0:
		return usageErr("--nbf-skew %v: must be a whole number of seconds (iat and nbf are in seconds)", *nbfSkew)
	}
	audience, err := sf.audience()
	if err != nil {
		return usageErr("%v", err)
	}

	claims := approval.Claims{
		Issuer:     sf.iss,
		Subject:    *sub,
		Actor:      sf.actor,
		Audience:   audience,
		ID:         *jti,
		RunID:      *runID,
		ProposalID: *proposalID,
	}
	if *grant {
		switch {
		case isSet(fs, "tool") || isSet(fs, "args"):
			return usageErr("--grant takes --tools and --max-uses, not --tool or --args")
		case *tools == "" || !isSet(fs, "max-uses"):
			return usageErr("--grant needs --tools and --max-uses")
		}
		if claims.Tools, claims.MaxUses, err = grantScope(*tools, *maxUses); err != nil {
			return usageErr("%v", err)
		}
		claims.Kind = approval.KindGrant
	} else {
		switch {
		case *tools != "" || isSet(fs, "max-uses"):
			return usageErr("--tools and --max-uses need --grant")
		case *tool == "":
			return usageErr("--tool is required (or --grant)")
		}
		if err := checkTool(*tool); err != nil {
			return usageErr("%v", err)
		}
		raw, err := readArg(c, *toolArgs)
		if err != nil {
			return fail(c, "token mint", fmt.Errorf("read --args: %w", err))
		}
		sum, err := argsSHA256(*tool, raw)
		if err != nil {
			return usageErr("--args: %v", err)
		}
		claims.Kind, claims.Tool, claims.ArgsSHA256 = approval.KindApproval, *tool, sum
	}

	key, err := sf.key(c)
	if err != nil {
		return keyError(fs, c, err)
	}
	token, claims, err := sf.sign(key, claims, *nbfSkew, time.Now())
	if err != nil {
		return fail(c, "token mint", err)
	}
	if *asJSON {
		return printJSON(c, "token mint", mintResult{
			Token:      token,
			JTI:        claims.ID,
			Exp:        claims.Expiry.UTC().Format(time.RFC3339),
			ArgsSHA256: claims.ArgsSHA256,
		})
	}
	fmt.Fprintln(c.stdout, token)
	return exitOK
}

// signing is what the commands that sign tokens (token mint, approve,
// grant) share: the algorithm and key, the issuer, audience and operator,
// and the lifetime.
type signing struct {
	alg                string // --alg, $M1_JWT_ALGORITHM; "" = EdDSA, or the --key file's own
	keyFile, secretEnv string
	aud, iss, actor    string
	ttl                time.Duration
	maxTTLMinutes      int
}

// secretVar is where an HS256 secret comes from when --secret-env does not
// name another variable: the sidecars' own setting.
const secretVar = "M1_JWT_SECRET"

// signingEnv is the environment behind the signing flags; actorFlag names
// the flag of the operator (act.sub), whose default is $USER.
func signingEnv(actorFlag string) map[string]string {
	return map[string]string{
		"alg":             "M1_JWT_ALGORITHM",
		"key":             "M1_SIGNING_KEY",
		"aud":             "M1_AUDIENCE",
		actorFlag:         "USER",
		"max-ttl-minutes": "M1_APPROVAL_TOKEN_TTL_MINUTES",
	}
}

// register adds the signing flags to fs; the operator's flag is actorFlag.
func (s *signing) register(fs *flagSet, actorFlag, actorUsage string) {
	fs.StringVar(&s.alg, "alg", "", "signing `algorithm`: EdDSA (the default), ES256 or RS256 with --key; HS256 with the shared secret $M1_JWT_SECRET (or --secret-env)")
	fs.StringVar(&s.keyFile, "key", "", "private JWK `file` written by m1 keys gen")
	fs.StringVar(&s.secretEnv, "secret-env", "", "HS256: read the secret from the environment variable `NAME` instead of $M1_JWT_SECRET")
	fs.StringVar(&s.aud, "aud", "", "`audience`: the tool service's M1_AUDIENCE (comma-separated for several)")
	fs.StringVar(&s.iss, "iss", "m1-cli", "`issuer`")
	fs.StringVar(&s.actor, actorFlag, "", actorUsage)
	fs.DurationVar(&s.ttl, "ttl", 5*time.Minute, "`lifetime` of the token (exp - iat), whole seconds")
	fs.IntVar(&s.maxTTLMinutes, "max-ttl-minutes", 0, "refuse a --ttl longer than this many `minutes`, the sidecars' limit (0: no check)")
}

// hs256 reports whether the token is signed with a shared secret: --alg
// HS256, or --secret-env without an algorithm.
func (s *signing) hs256() bool {
	return s.alg == approval.AlgHS256 || (s.alg == "" && s.secretEnv != "")
}

// check validates the signing flags; its error is a usage error.
func (s *signing) check() error {
	switch s.alg {
	case "", approval.AlgEdDSA, approval.AlgES256, approval.AlgRS256, approval.AlgHS256:
	default:
		return fmt.Errorf("--alg %q ($M1_JWT_ALGORITHM): want EdDSA, ES256, RS256 or HS256", s.alg)
	}
	switch {
	case s.keyFile != "" && s.secretEnv != "":
		return errors.New("--key ($M1_SIGNING_KEY) and --secret-env cannot be combined")
	case s.hs256() && s.keyFile != "":
		return errors.New("HS256 signs with the shared secret $M1_JWT_SECRET (or --secret-env NAME), not a --key file ($M1_SIGNING_KEY); unset one of them")
	case !s.hs256() && s.secretEnv != "":
		return fmt.Errorf("--secret-env is for HS256, not --alg %s ($M1_JWT_ALGORITHM)", s.alg)
	case !s.hs256() && s.keyFile == "":
		return errors.New("a key is required: --key FILE ($M1_SIGNING_KEY); for HS256, set M1_JWT_ALGORITHM=HS256 (or --alg HS256) with the secret in $M1_JWT_SECRET")
	case s.aud == "":
		return errors.New("--aud (or $M1_AUDIENCE) is required")
	case s.ttl < time.Second:
		return fmt.Errorf("--ttl %v: must be at least 1s", s.ttl)
	case s.ttl%time.Second != 0:
		return fmt.Errorf("--ttl %v: must be a whole number of seconds (exp is in seconds)", s.ttl)
	case s.maxTTLMinutes < 0:
		return errors.New("--max-ttl-minutes must not be negative")
	case s.maxTTLMinutes > 0 && s.ttl > time.Duration(s.maxTTLMinutes)*time.Minute:
		return fmt.Errorf("--ttl %v exceeds the sidecars' limit of %d minutes (--max-ttl-minutes, $M1_APPROVAL_TOKEN_TTL_MINUTES): they would refuse it with token_ttl_exceeded", s.ttl, s.maxTTLMinutes)
	}
	return nil
}

// audience is --aud as a list.
func (s *signing) audience() ([]string, error) {
	aud, err := splitList(s.aud)
	if err != nil {
		return nil, fmt.Errorf("--aud: %w", err)
	}
	return aud, nil
}

// keyUsageError is a signing key that cannot be had because of how the
// command was called (an unset or short secret, a key file of another
// algorithm than --alg), as opposed to a key file that cannot be read.
type keyUsageError struct{ err error }

func (e *keyUsageError) Error() string { return e.err.Error() }
func (e *keyUsageError) Unwrap() error { return e.err }

// key loads the signing key (after check): for HS256 the secret from the
// environment variable named by --secret-env, else $M1_JWT_SECRET (never
// from a flag value, which ps would show), refused under 32 bytes as the
// sidecars refuse it; else the private JWK file --key, which must be of
// --alg when that is set. A usage problem is a *keyUsageError.
func (s *signing) key(c *cmdIO) (*approval.SigningKey, error) {
	if s.hs256() {
		name := cmp.Or(s.secretEnv, secretVar)
		secret, ok := c.lookupEnv(name)
		if !ok || secret == "" {
			return nil, &keyUsageError{fmt.Errorf("HS256: $%s is not set", name)}
		}
		if len(secret) < approval.MinSecretLen {
			return nil, &keyUsageError{fmt.Errorf("HS256: $%s must be at least %d bytes, got %d (m1-authz refuses a shorter M1_JWT_SECRET)", name, approval.MinSecretLen, len(secret))}
		}
		key, err := approval.HMACKey([]byte(secret))
		if err != nil {
			return nil, &keyUsageError{fmt.Errorf("HS256: $%s: %w", name, err)}
		}
		return key, nil
	}
	key, err := approval.LoadSigningKey(s.keyFile)
	if err != nil {
		return nil, err
	}
	if s.alg != "" && key.Alg != s.alg {
		return nil, &keyUsageError{fmt.Errorf("--key %s is an %s key, but the algorithm is %s (--alg, $M1_JWT_ALGORITHM)", s.keyFile, key.Alg, s.alg)}
	}
	return key, nil
}

// keyError reports an error of [signing.key] and returns exit status 2.
func keyError(fs *flagSet, c *cmdIO, err error) int {
	if ue, ok := errors.AsType[*keyUsageError](err); ok {
		code, _ := usageError(fs, c, ue)
		return code
	}
	return fail(c, strings.TrimPrefix(fs.Name(), "m1 "), err)
}

// sign signs claims with k and returns the token and the claims as signed:
// a random jti unless ID is set, iat and nbf now (in whole seconds) less
// nbfSkew, exp iat + --ttl.
func (s *signing) sign(k *approval.SigningKey, claims approval.Claims, nbfSkew time.Duration, now time.Time) (string, approval.Claims, error) {
	if claims.ID == "" {
		claims.ID = randomJTI()
	}
	claims.IssuedAt = now.Truncate(time.Second).Add(-nbfSkew.Truncate(time.Second))
	claims.NotBefore = claims.IssuedAt
	claims.Expiry = claims.IssuedAt.Add(s.ttl.Truncate(time.Second))
	token, err := approval.Mint(k, claims)
	return token, claims, err
}

// mintResult is the --json output of m1 token mint. Exp is RFC 3339, as the
// revocation API's until takes it.
type mintResult struct {
	Token      string `json:"token"`
	JTI        string `json:"jti"`
	Exp        string `json:"exp"`
	ArgsSHA256 string `json:"args_sha256,omitempty"` // approvals only
}

// randomJTI is 128 random bits, base64url.
func randomJTI() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// splitList splits a comma-separated list; empty elements are an error.
func splitList(s string) ([]string, error) {
	var out []string
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e == "" {
			return nil, fmt.Errorf("%q has an empty element", s)
		}
		out = append(out, e)
	}
	return out, nil
}

// toolPatterns parses a grant's --tools: exact tool names or name* (a
// prefix), never a bare * (which would allow every tool).
func toolPatterns(s string) ([]string, error) {
	list, err := splitList(s)
	if err != nil {
		return nil, err
	}
	for _, p := range list {
		prefix, _ := strings.CutSuffix(p, "*")
		switch {
		case p == "*":
			return nil, errors.New("a bare * would allow every tool: name the tools, or use a prefix such as fs.*")
		case !toolcall.ValidName(prefix):
			return nil, fmt.Errorf("%q: want a tool name or a tool-name prefix followed by *, of [A-Za-z0-9_.-]", p)
		}
	}
	return list, nil
}

// grantScope validates what a grant allows: --tools (see [toolPatterns])
// and --max-uses, at least 1.
func grantScope(tools string, maxUses int) ([]string, int, error) {
	if maxUses < 1 {
		return nil, 0, fmt.Errorf("--max-uses %d: must be at least 1", maxUses)
	}
	patterns, err := toolPatterns(tools)
	if err != nil {
		return nil, 0, fmt.Errorf("--tools: %w", err)
	}
	return patterns, maxUses, nil
}

const tokenInspectDescription = `Decode an approval token (TOKEN, or - to read it from stdin) and print
its header, its claims with the times also in RFC 3339, and its argument
hash. Nothing is trusted without --jwks: the output then says "signature
not verified".

With --jwks (the sidecars' public JWKS; --secret-env NAME adds an HS256
secret, or verifies with it alone) the token is verified by the sidecar's
own verifier, hard checks 1 to 7: signature and algorithm, typ and claims,
expiry, not-before, lifetime, audience (--aud, else the token's first
aud), issuer; it prints ok or the error code. --aud, --clock-skew,
--max-ttl-minutes and --trusted-issuers apply to that verification only,
and are refused without --jwks or --secret-env. With --tool (and --args,
default {}) it also says whether the token allows that call (tool_mismatch,
args_mismatch). Revocation and single use are the sidecar's state and are
not checked.

Exit status: 0 decoded (and, when asked, valid and bound to the call),
1 malformed, invalid or not bound, 2 error (bad flags, no token).`

func runTokenInspect(_ context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("token inspect", "m1 token inspect TOKEN|- [--jwks FILE] [--aud AUD] [--tool TOOL [--args JSON]]",
		tokenInspectDescription, map[string]string{
			"jwks":            "M1_JWKS_FILE",
			"aud":             "M1_AUDIENCE",
			"max-ttl-minutes": "M1_APPROVAL_TOKEN_TTL_MINUTES",
			"clock-skew":      "M1_CLOCK_SKEW",
			"trusted-issuers": "M1_TRUSTED_ISSUERS",
		})
	jwks := fs.String("jwks", "", "verify against this public JWKS `file`")
	secretEnv := fs.String("secret-env", "", "verify HS256 with the secret in the environment variable `NAME`")
	aud := fs.String("aud", "", "with --jwks: the sidecar's `audience` (default: the token's first aud)")
	tool := fs.String("tool", "", "check that the token allows a call of this `tool`")
	toolArgs := fs.String("args", "{}", "with --tool: the call's `arguments`, a JSON object, @FILE, or @- for stdin")
	maxTTL := fs.Int("max-ttl-minutes", int(approval.DefaultMaxTTL/time.Minute), "with --jwks: longest accepted lifetime (exp - iat) in `minutes`")
	skew := fs.Duration("clock-skew", approval.DefaultClockSkew, "with --jwks: leeway on exp, nbf and iat")
	issuers := fs.String("trusted-issuers", "", "with --jwks: comma-separated `issuers` to accept (empty: any)")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	if code, ok := parse(fs, c, args, 1, 1); !ok {
		return code
	}
	usageErr := func(format string, a ...any) int {
		code, _ := usageError(fs, c, fmt.Errorf(format, a...))
		return code
	}
	switch {
	case isSet(fs, "args") && *tool == "":
		return usageErr("--args needs --tool")
	case *maxTTL < 1:
		return usageErr("--max-ttl-minutes must be at least 1")
	case *skew < 0:
		return usageErr("--clock-skew must not be negative")
	}
	if *jwks == "" && *secretEnv == "" {
		// Given on the command line, not from the environment: a shell
		// that sets $M1_AUDIENCE for the sidecars may still decode.
		var verifyOnly []string
		for _, name := range []string{"aud", "clock-skew", "max-ttl-minutes", "trusted-issuers"} {
			if fs.given[name] {
				verifyOnly = append(verifyOnly, "--"+name)
			}
		}
		if len(verifyOnly) > 0 {
			verb := "needs"
			if len(verifyOnly) > 1 {
				verb = "need"
			}
			return usageErr("%s %s --jwks FILE (or --secret-env NAME for HS256): without a key nothing is verified", strings.Join(verifyOnly, ", "), verb)
		}
	}
	token := fs.Arg(0)
	if token == "-" {
		b, err := io.ReadAll(io.LimitReader(c.stdin, approval.MaxTokenLen+1024))
		if err != nil {
			return fail(c, "token inspect", fmt.Errorf("read token: %w", err))
		}
		token = string(b)
	}
	if token = strings.TrimSpace(token); token == "" {
		where := "the argument is empty"
		if fs.Arg(0) == "-" {
			where = "stdin is empty"
		}
		return fail(c, "token inspect", fmt.Errorf("no token: %s", where))
	}

	// Everything that can fail for a reason other than the token first.
	var wantSHA string
	if *tool != "" {
		if err := checkTool(*tool); err != nil {
			return usageErr("%v", err)
		}
		raw, err := readArg(c, *toolArgs)
		if err != nil {
			return fail(c, "token inspect", fmt.Errorf("read --args: %w", err))
		}
		if wantSHA, err = argsSHA256(*tool, raw); err != nil {
			return usageErr("--args: %v", err)
		}
	}
	var keys *approval.KeySet
	if *jwks != "" {
		var err error
		if keys, err = approval.LoadJWKS(*jwks); err != nil {
			return fail(c, "token inspect", err)
		}
	}
	if *secretEnv != "" {
		secret, ok := c.lookupEnv(*secretEnv)
		if !ok || secret == "" {
			return usageErr("--secret-env: $%s is not set", *secretEnv)
		}
		var err error
		if keys, err = keys.WithSecret([]byte(secret)); err != nil {
			return usageErr("--secret-env: $%s: %v", *secretEnv, err)
		}
	}
	var trusted []string
	if *issuers != "" {
		var err error
		if trusted, err = splitList(*issuers); err != nil {
			return usageErr("--trusted-issuers: %v", err)
		}
	}

	r := inspectResult{Valid: validNotVerified}
	header, payload, decodeErr := approval.Inspect(token)
	r.Header, r.Claims = header, payload
	r.Times = claimTimes(payload)
	unverified := claimsOf(payload)
	r.Kind, r.ArgsSHA256 = unverified.Kind, unverified.ArgsSHA256
	if decodeErr != nil {
		r.Valid, r.Reason = deny.TokenInvalid, decodeErr.Error()
	}

	bindTo := &unverified
	if keys != nil {
		r.Verified = true
		audience := *aud
		if audience == "" && len(unverified.Audience) > 0 {
			audience = unverified.Audience[0]
		}
		if audience == "" {
			// Only a token without a usable aud gets here; it fails check 2
			// before the audience is compared.
			audience = "-"
		}
		v, err := approval.NewVerifier(approval.VerifierOptions{
			Keys:           keys,
			Audience:       audience,
			TrustedIssuers: trusted,
			MaxTTL:         time.Duration(*maxTTL) * time.Minute,
			ClockSkew:      *skew,
			CacheSize:      -1,
		})
		if err != nil {
			return fail(c, "token inspect", err)
		}
		r.Audience = audience
		verified, err := v.Verify(token)
		var ae *approval.Error
		switch {
		case err == nil:
			r.Valid, r.Reason = validOK, ""
			bindTo = verified
		case errors.As(err, &ae):
			r.Valid, r.Reason = ae.Code, ae.Reason
		default:
			r.Valid, r.Reason = deny.TokenInvalid, err.Error()
		}
	}
	if *tool != "" {
		r.Binding = bindCall(bindTo, *tool, wantSHA)
	}

	if *asJSON {
		if code := printJSON(c, "token inspect", r); code != exitOK {
			return code
		}
	} else if err := r.print(c.stdout, time.Now()); err != nil {
		return fail(c, "token inspect", err)
	}
	return r.exitCode()
}

// Values of inspectResult.Valid besides the error codes.
const (
	validOK          = "ok"
	validNotVerified = "signature not verified"
)

// inspectResult is the --json output of m1 token inspect.
type inspectResult struct {
	Header     map[string]any    `json:"header"`
	Claims     map[string]any    `json:"claims"`
	Times      map[string]string `json:"times,omitempty"` // iat, nbf, exp in RFC 3339
	Kind       string            `json:"kind,omitempty"`
	ArgsSHA256 string            `json:"args_sha256,omitempty"`
	Verified   bool              `json:"verified"`           // checked against keys
	Audience   string            `json:"audience,omitempty"` // the audience it was checked for
	Valid      string            `json:"valid"`              // "ok", an error code, or "signature not verified"
	Reason     string            `json:"reason,omitempty"`
	Binding    *binding          `json:"binding,omitempty"`
}

// binding says whether a token allows one call.
type binding struct {
	Tool       string `json:"tool"`
	ArgsSHA256 string `json:"args_sha256"`
	Result     string `json:"result"` // "ok", "tool_mismatch" or "args_mismatch"
	Reason     string `json:"reason,omitempty"`
}

// bindCall is hard check 8 of DESIGN §4: [approval.Claims.Bind], the
// sidecar's own.
func bindCall(c *approval.Claims, tool, argsSHA string) *binding {
	b := &binding{Tool: tool, ArgsSHA256: argsSHA, Result: validOK}
	if err := c.Bind(tool, argsSHA); err != nil {
		b.Result, b.Reason = deny.TokenInvalid, err.Error()
		if ae, ok := errors.AsType[*approval.Error](err); ok {
			b.Result, b.Reason = ae.Code, ae.Reason
		}
	}
	return b
}

func (r *inspectResult) exitCode() int {
	switch {
	case r.Valid != validOK && r.Valid != validNotVerified:
		return exitDeny
	case r.Binding != nil && r.Binding.Result != validOK:
		return exitDeny
	}
	return exitOK
}

// print writes the human-readable form.
func (r *inspectResult) print(w io.Writer, now time.Time) error {
	for _, part := range []struct {
		name string
		v    map[string]any
	}{{"header", r.Header}, {"claims", r.Claims}} {
		if part.v == nil {
			continue
		}
		b, err := json.MarshalIndent(part.v, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s:\n%s\n", part.name, b)
	}
	for _, name := range []string{"iat", "nbf", "exp"} {
		if t, ok := r.Times[name]; ok {
			fmt.Fprintf(w, "%-12s %s%s\n", name+":", t, relative(t, now))
		}
	}
	if r.Kind != "" {
		fmt.Fprintf(w, "%-12s %s\n", "kind:", r.Kind)
	}
	if r.ArgsSHA256 != "" {
		fmt.Fprintf(w, "%-12s %s\n", "args_sha256:", r.ArgsSHA256)
	}
	valid := r.Valid
	switch {
	case r.Verified && r.Valid == validOK:
		valid += fmt.Sprintf(" (verified for audience %q)", r.Audience)
	case !r.Verified && r.Valid == validNotVerified:
		valid += " (give --jwks FILE, or --secret-env NAME for HS256)"
	}
	if r.Reason != "" {
		valid += ": " + r.Reason
	}
	fmt.Fprintf(w, "%-12s %s\n", "valid:", valid)
	if b := r.Binding; b != nil {
		line := fmt.Sprintf("%s for %s with args_sha256 %s", b.Result, b.Tool, b.ArgsSHA256)
		if b.Reason != "" {
			line += ": " + b.Reason
		}
		fmt.Fprintf(w, "%-12s %s\n", "binding:", line)
	}
	return nil
}

// relative is " (in 4m0s)" or " (1m0s ago)" for an RFC 3339 time.
func relative(ts string, now time.Time) string {
	t, err := time.Parse(time.RFC3339, ts)
	if err != nil {
		return ""
	}
	switch d := t.Sub(now).Round(time.Second); {
	case d > 0:
		return " (in " + d.String() + ")"
	case d < 0:
		return " (" + (-d).String() + " ago)"
	}
	return " (now)"
}

// claimTimes returns iat, nbf and exp of an unverified payload in RFC 3339,
// for those that are NumericDates.
func claimTimes(payload map[string]any) map[string]string {
	out := map[string]string{}
	for _, name := range []string{"iat", "nbf", "exp"} {
		f, ok := payload[name].(float64)
		if !ok || f < 0 || f > 253402300799 || math.IsNaN(f) {
			continue
		}
		sec, frac := math.Modf(f)
		out[name] = time.Unix(int64(sec), int64(frac*1e9)).UTC().Format(time.RFC3339)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// claimsOf reads what a binding check needs from an unverified payload;
// members of the wrong type are left empty.
func claimsOf(payload map[string]any) approval.Claims {
	var c approval.Claims
	switch aud := payload["aud"].(type) {
	case string:
		c.Audience = []string{aud}
	case []any:
		for _, a := range aud {
			if s, ok := a.(string); ok && s != "" {
				c.Audience = append(c.Audience, s)
			}
		}
	}
	ext, _ := payload["m1"].(map[string]any)
	c.Kind, _ = ext["kind"].(string)
	c.Tool, _ = ext["tool"].(string)
	c.ArgsSHA256, _ = ext["args_sha256"].(string)
	if tools, ok := ext["tools"].([]any); ok {
		for _, t := range tools {
			if s, ok := t.(string); ok {
				c.Tools = append(c.Tools, s)
			}
		}
	}
	return c
}
