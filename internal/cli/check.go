package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/m1-agent/m1/internal/envoy"
	"github.com/m1-agent/m1/toolcall"
)

// Defaults of m1 check.
const (
	defaultAuthzAddr      = "127.0.0.1:9191"
	defaultApprovalHeader = "x-m1-approval-token"
)

const checkDescription = `Send one request to m1-authz's ext_authz gRPC service
(envoy.service.auth.v3.Authorization/Check) as Envoy's ext_authz filter
would build it, and print the decision the client behind Envoy would get.
The body comes from --body, or --tool and --args build an MCP tools/call;
with a body and no Content-Type header, "application/json" is sent.
--request sends a protojson CheckRequest file as is instead.

gRPC is plaintext to host:port, TLS to https://host:port (or when
--ca-file or --cert-file is given): the server is verified against
--ca-file ($M1_CA_FILE), and --cert-file/--key-file ($M1_CLIENT_CERT_FILE,
$M1_CLIENT_KEY_FILE) present a client certificate to a sidecar that
requires one (M1_TLS_CLIENT_CA_FILE); its SPIFFE ID is then the principal
when neither --token nor --principal names one.

Exit status: 0 allow, 1 deny, 2 error (bad flags, connection failure,
timeout).`

// requestFlags are the flags that build a request; --request excludes them.
var requestFlags = []string{"method", "path", "host", "header", "body", "tool", "args", "raw",
	"principal", "token", "source", "destination", "context"}

func runCheck(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("check", "m1 check [flags]", checkDescription, map[string]string{
		"addr":            "M1_AUTHZ_ADDR",
		"approval-header": "M1_APPROVAL_HEADER",
		"path":            "M1_MCP_PATH",
	})
	addr := fs.String("addr", defaultAuthzAddr, "m1-authz ext_authz gRPC `address`: host:port, or https://host:port for TLS")
	var tf tlsFlags
	tf.register(fs, true)
	method := fs.String("method", "POST", "HTTP `method`")
	path := fs.String("path", toolcall.DefaultMCPPath, "request `path`, with the query (the sidecars' MCP path by default)")
	host := fs.String("host", "localhost", "request `host` (the :authority)")
	var headers, contextExt listFlag
	fs.Var(&headers, "header", "request header `name=value` or 'name: value' (repeatable)")
	body := fs.String("body", "", "request `body`: a string, @FILE, or @- for stdin")
	tool := fs.String("tool", "", "send an MCP tools/call of this `tool` (instead of --body)")
	toolArgs := fs.String("args", "{}", "`arguments` of --tool: a JSON object, @FILE, or @- for stdin")
	raw := fs.Bool("raw", false, "send the body in raw_body, as Envoy does with pack_as_bytes: true")
	principal := fs.String("principal", "", "source `principal` (the mTLS peer identity Envoy reports)")
	token := fs.String("token", "", "approval `token`, sent in the --approval-header header")
	approvalHeader := fs.String("approval-header", defaultApprovalHeader, "`name` of the approval token header")
	source := fs.String("source", "", "source (downstream peer) `address` host:port")
	dest := fs.String("destination", "", "destination (Envoy listener) `address` host:port")
	fs.Var(&contextExt, "context", "context extension `key=value` (repeatable)")
	request := fs.String("request", "", "send this protojson CheckRequest `file` (- for stdin) as is")
	dryRun := fs.Bool("dry-run", false, "print the CheckRequest as protojson instead of sending it")
	timeout := fs.Duration("timeout", 5*time.Second, "deadline of the Check call")
	asJSON := fs.Bool("json", false, "print the decision as one JSON object")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	if *timeout <= 0 {
		code, _ := usageError(fs, c, errors.New("--timeout must be positive"))
		return code
	}

	var req *authv3.CheckRequest
	var err error
	if *request != "" {
		var conflict []string
		for _, n := range requestFlags {
			if fs.given[n] { // on the command line: a default from the environment is no conflict
				conflict = append(conflict, "--"+n)
			}
		}
		if len(conflict) > 0 {
			code, _ := usageError(fs, c, fmt.Errorf("--request cannot be combined with %s", strings.Join(conflict, ", ")))
			return code
		}
		req, err = readCheckRequest(c, *request)
	} else {
		req, err = buildRequest(c, checkRequestFlags{
			method: *method, path: *path, host: *host, headers: headers, body: *body,
			tool: *tool, toolArgs: *toolArgs, raw: *raw, principal: *principal,
			token: *token, approvalHeader: *approvalHeader, source: *source, dest: *dest,
			context: contextExt, hostSet: isSet(fs, "host"), bodySet: isSet(fs, "body"), toolSet: isSet(fs, "tool"),
			argsSet: isSet(fs, "args"),
		})
	}
	if err != nil {
		return fail(c, "check", err)
	}
	if *dryRun {
		b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(req)
		if err != nil {
			return fail(c, "check", err)
		}
		fmt.Fprintf(c.stdout, "%s\n", b)
		return exitOK
	}

	target, tlsCfg, err := tf.grpcTarget(*addr)
	if err != nil {
		code, _ := usageError(fs, c, err)
		return code
	}
	resp, err := check(ctx, target, grpcCredentials(tlsCfg), *timeout, req)
	if err != nil {
		return fail(c, "check", err)
	}
	r := fromCheckResponse(resp)
	if err := r.print(c.stdout, *asJSON); err != nil {
		return fail(c, "check", err)
	}
	return r.exitCode()
}

func isSet(fs *flagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// checkRequestFlags are the parsed request-building flags of m1 check.
type checkRequestFlags struct {
	method, path, host        string
	headers                   []string
	body, tool, toolArgs      string
	raw                       bool
	principal                 string
	token, approvalHeader     string
	source, dest              string
	context                   []string
	hostSet, bodySet, toolSet bool
	argsSet                   bool
}

// buildRequest turns m1 check's flags into a CheckRequest.
func buildRequest(c *cmdIO, f checkRequestFlags) (*authv3.CheckRequest, error) {
	r := envoy.Request{
		Method:          f.method,
		Path:            f.path,
		Host:            f.host,
		PackAsBytes:     f.raw,
		SourcePrincipal: f.principal,
		SourceAddr:      f.source,
		DestAddr:        f.dest,
	}
	hasContentType := false
	for _, h := range f.headers {
		i := strings.IndexAny(h, "=:")
		if i <= 0 {
			return nil, fmt.Errorf("--header %q: want name=value or 'name: value'", h)
		}
		name := strings.TrimSpace(h[:i])
		if strings.EqualFold(name, "host") && !f.hostSet {
			// --host has a default; a Host header replaces it.
			r.Host = ""
		}
		hasContentType = hasContentType || strings.EqualFold(name, "content-type")
		r.Headers = append(r.Headers, [2]string{name, h[i+1:]})
	}
	if f.token != "" {
		r.Headers = append(r.Headers, [2]string{f.approvalHeader, f.token})
	}
	for _, kv := range f.context {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--context %q: want key=value", kv)
		}
		if r.ContextExtensions == nil {
			r.ContextExtensions = map[string]string{}
		}
		r.ContextExtensions[k] = v
	}

	prefix, ok := c.lookupEnv("M1_TOOLS_PATH_PREFIX")
	if !ok || prefix == "" {
		prefix = toolcall.DefaultToolsPathPrefix
	}
	switch {
	case f.bodySet && f.toolSet:
		return nil, errors.New("--body and --tool cannot be combined")
	case f.argsSet && !f.toolSet:
		return nil, errors.New("--args needs --tool (for a REST tool path, give the arguments as --body)")
	case f.toolSet && strings.HasPrefix(f.path, prefix):
		return nil, fmt.Errorf("--tool sends an MCP tools/call, not to the tool path %q: give the arguments as --body there, or --path the MCP path", f.path)
	case f.toolSet:
		args, err := readArg(c, f.toolArgs)
		if err != nil {
			return nil, fmt.Errorf("read --args: %w", err)
		}
		if !json.Valid(args) {
			return nil, fmt.Errorf("--args is not JSON: %.80q", args)
		}
		r.Body, err = json.Marshal(map[string]any{
			"jsonrpc": "2.0",
			"id":      1,
			"method":  "tools/call",
			"params":  map[string]any{"name": f.tool, "arguments": json.RawMessage(args)},
		})
		if err != nil {
			return nil, fmt.Errorf("build tools/call body: %w", err)
		}
	case f.bodySet:
		var err error
		if r.Body, err = readArg(c, f.body); err != nil {
			return nil, fmt.Errorf("read --body: %w", err)
		}
	}
	if len(r.Body) > 0 && !hasContentType {
		r.Headers = append(r.Headers, [2]string{"content-type", "application/json"})
	}
	return envoy.BuildCheckRequest(r)
}

// readCheckRequest reads a protojson CheckRequest file ("-" for stdin).
func readCheckRequest(c *cmdIO, name string) (*authv3.CheckRequest, error) {
	b, err := readFile(c, name)
	if err != nil {
		return nil, fmt.Errorf("read CheckRequest: %w", err)
	}
	req := &authv3.CheckRequest{}
	if err := protojson.Unmarshal(b, req); err != nil {
		return nil, fmt.Errorf("parse CheckRequest %s: %w", name, err)
	}
	return req, nil
}

// check calls Authorization/Check on addr (host:port) with creds.
func check(ctx context.Context, addr string, creds grpc.DialOption, timeout time.Duration, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	conn, err := grpc.NewClient(addr, creds)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := authv3.NewAuthorizationClient(conn).Check(ctx, req)
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable:
			return nil, fmt.Errorf("check at %s: %w (is m1-authz running there? set --addr or $M1_AUTHZ_ADDR)", addr, err)
		case codes.DeadlineExceeded:
			return nil, fmt.Errorf("check at %s: no answer within %v: %w", addr, timeout, err)
		}
		return nil, fmt.Errorf("check at %s: %w", addr, err)
	}
	return resp, nil
}
