package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/policies"
	"github.com/m1-agent/m1/toolcall"
)

const policyUsage = `Usage:
  m1 policy test [DIR]
  m1 policy eval [DIR] --input FILE [flags]
  m1 policy sign DIR --key PRIVATE.pem (--out BUNDLE.tar.gz | --signatures)
  m1 policy replay BUNDLE [--since T] [--db URL] [--json]

Commands:
  test    run the bundle's Rego unit tests (exit 0 pass, 1 fail, 2 error)
  eval    evaluate the bundle's decision for one input (exit 0 allow, 1 deny, 2 error)
  sign    sign a bundle with OPA's bundle signing (exit 0 signed, 2 error)
  replay  re-decide audited decisions with a candidate bundle (exit 0 none change, 1 some do, 2 error)

DIR is an OPA bundle directory; without it, $M1_POLICY_DIR, else the
embedded default bundle. Run 'm1 policy <command> -h' for its flags.
`

func runPolicy(ctx context.Context, c *cmdIO, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, policyUsage)
		return exitError
	}
	switch args[0] {
	case "test":
		return runPolicyTest(ctx, c, args[1:])
	case "eval":
		return runPolicyEval(ctx, c, args[1:])
	case "sign":
		return runPolicySign(ctx, c, args[1:])
	case "replay":
		return runPolicyReplay(ctx, c, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, policyUsage)
		return exitOK
	}
	fmt.Fprintf(c.stderr, "m1 policy: unknown command %q\n\n%s", args[0], policyUsage)
	return exitError
}

const policyTestDescription = `Run the Rego unit tests (test_* rules of the *_test.rego files) of the
bundle in DIR, or of $M1_POLICY_DIR, or of the embedded default bundle, and
print one PASS, FAIL or ERROR line per test and a summary.

Exit status: 0 all pass, 1 a test failed, 2 error (the bundle does not load
or compile).`

func runPolicyTest(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("policy test", "m1 policy test [DIR]", policyTestDescription, nil)
	if code, ok := parse(fs, c, args, 0, 1); !ok {
		return code
	}
	b, err := loadBundle(c, fs.Arg(0))
	if err != nil {
		return fail(c, "policy test", err)
	}
	ok, err := policy.RunTests(ctx, b, c.stdout)
	switch {
	case err != nil:
		return fail(c, "policy test", err)
	case !ok:
		return exitDeny
	}
	return exitOK
}

const policyEvalDescription = `Evaluate the decision of the bundle in DIR (or $M1_POLICY_DIR, or the
embedded default bundle) for the JSON document in FILE ("-" for stdin),
and print it with the bundle revision and whether the sidecar may cache
the policy's decisions.

FILE is either a policy input document (input.m1, input.attributes, …), or
a CheckRequest in protojson (an object whose only key is "attributes", as in
testdata/checkrequests/): that is decided in-process exactly as m1-authz
decides it (parse, policy, deny codes) and printed as by m1 check.

Exit status: 0 allow, 1 deny, 2 error (also an undefined or malformed
decision, which the sidecar would deny with policy_error).`

func runPolicyEval(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("policy eval", "m1 policy eval [DIR] --input FILE [flags]", policyEvalDescription, map[string]string{
		"path":              "M1_POLICY_PATH",
		"mcp-path":          "M1_MCP_PATH",
		"tools-path-prefix": "M1_TOOLS_PATH_PREFIX",
		"max-body-bytes":    "M1_MAX_BODY_BYTES",
		"approval-header":   "M1_APPROVAL_HEADER",
	})
	input := fs.String("input", "", "input `file`: a policy input or a protojson CheckRequest (- for stdin)")
	path := fs.String("path", policy.DefaultPath, "decision `path` in the bundle")
	mcpPath := fs.String("mcp-path", toolcall.DefaultMCPPath, "`path` of the MCP endpoint (CheckRequest input)")
	toolsPrefix := fs.String("tools-path-prefix", toolcall.DefaultToolsPathPrefix, "`prefix` of REST tool paths (CheckRequest input)")
	maxBody := fs.Int64("max-body-bytes", 1<<20, "largest body accepted on the MCP and tool paths (CheckRequest input)")
	approvalHeader := fs.String("approval-header", defaultApprovalHeader, "`name` of the approval token header (CheckRequest input)")
	timeout := fs.Duration("timeout", 0, "evaluation timeout (0: none)")
	asJSON := fs.Bool("json", false, "print the decision as one JSON object")
	if code, ok := parse(fs, c, args, 0, 1); !ok {
		return code
	}
	if *input == "" {
		code, _ := usageError(fs, c, errors.New("--input is required"))
		return code
	}
	if *timeout < 0 {
		code, _ := usageError(fs, c, errors.New("--timeout must not be negative"))
		return code
	}
	data, err := readFile(c, *input)
	if err != nil {
		return fail(c, "policy eval", fmt.Errorf("read input: %w", err))
	}
	b, err := loadBundle(c, fs.Arg(0))
	if err != nil {
		return fail(c, "policy eval", err)
	}
	engine, err := policy.Prepare(ctx, b, policy.Options{Path: *path, Timeout: *timeout})
	if err != nil {
		return fail(c, "policy eval", err)
	}

	var r *result
	if req, ok, err := asCheckRequest(data); err != nil {
		return fail(c, "policy eval", fmt.Errorf("input %s: %w", *input, err))
	} else if ok {
		// The sidecar's decision path, with metrics on a private registry.
		m, err := authz.NewMetrics(prometheus.NewRegistry())
		if err != nil {
			return fail(c, "policy eval", err)
		}
		st := state.NewMemory(state.MemoryOptions{})
		svc, err := authz.New(authz.Options{
			Parse: toolcall.Options{
				MCPPath:         *mcpPath,
				ToolsPathPrefix: *toolsPrefix,
				MaxBodyBytes:    *maxBody,
			},
			ApprovalHeader: strings.ToLower(*approvalHeader),
			Logger:         zap.NewNop(),
			Metrics:        m,
			Now:            time.Now,
			Uses:           st, // a fresh store: eval never replays
			Revocations:    st,
		}, engine)
		if err != nil {
			return fail(c, "policy eval", err)
		}
		resp, err := svc.Check(ctx, req)
		if err != nil {
			return fail(c, "policy eval", err)
		}
		r = fromCheckResponse(resp)
	} else {
		in, err := ast.ValueFromReader(bytes.NewReader(data))
		if err != nil {
			return fail(c, "policy eval", fmt.Errorf("input %s is not JSON: %w", *input, err))
		}
		d, err := engine.Eval(ctx, in)
		if err != nil {
			return fail(c, "policy eval", err)
		}
		r = fromPolicyDecision(&d)
	}
	cacheable, why := engine.Cacheable()
	r.Revision, r.Cacheable, r.CacheOffReason = engine.Revision(), &cacheable, why
	if err := r.print(c.stdout, *asJSON); err != nil {
		return fail(c, "policy eval", err)
	}
	return r.exitCode()
}

// asCheckRequest reads data as a protojson CheckRequest when it is a JSON
// object whose only key is "attributes" (a policy input has others: m1,
// parsed_path, …). ok is false for any other document.
func asCheckRequest(data []byte) (req *authv3.CheckRequest, ok bool, err error) {
	var top map[string]json.RawMessage
	if json.Unmarshal(data, &top) != nil || len(top) != 1 || top["attributes"] == nil {
		return nil, false, nil
	}
	req = &authv3.CheckRequest{}
	if err := protojson.Unmarshal(data, req); err != nil {
		return nil, false, fmt.Errorf("looks like a CheckRequest but is not one: %w", err)
	}
	return req, true, nil
}

// loadBundle loads the bundle in dir, else in $M1_POLICY_DIR, else the
// embedded default bundle.
func loadBundle(c *cmdIO, dir string) (*policy.Bundle, error) {
	if dir == "" {
		dir, _ = c.lookupEnv("M1_POLICY_DIR")
	}
	if dir == "" {
		return policy.LoadFS(policies.FS())
	}
	return policy.LoadDir(dir)
}
