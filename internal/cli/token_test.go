package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/deny"
	"github.com/m1-agent/m1/toolcall"
)

// testSecret is an HS256 secret for tests (32 bytes).
const testSecret = "0123456789abcdef0123456789abcdef"

// mint runs m1 token mint --json with env and returns its result.
func mint(t *testing.T, env map[string]string, args ...string) mintResult {
	t.Helper()
	r := m1With(t, env, "", append([]string{"token", "mint", "--json"}, args...)...)
	if r.code != exitOK {
		t.Fatalf("m1 token mint %q: %s", args, r)
	}
	var res mintResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("m1 token mint --json output %q: %v", r.stdout, err)
	}
	return res
}

// inspect runs m1 token inspect --json and returns the exit status and result.
func inspect(t *testing.T, env map[string]string, stdin string, args ...string) (int, inspectResult) {
	t.Helper()
	r := m1With(t, env, stdin, append([]string{"token", "inspect", "--json"}, args...)...)
	if r.code == exitError {
		t.Fatalf("m1 token inspect %q: %s", args, r)
	}
	var res inspectResult
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("m1 token inspect --json output %q: %v", r.stdout, err)
	}
	return r.code, res
}

// callSHA256 is the args_sha256 the sidecar computes for an MCP tools/call
// of tool with args.
func callSHA256(t *testing.T, tool, args string) string {
	t.Helper()
	body := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + tool + `","arguments":` + args + `}}`
	req := &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/mcp", Body: body}
	call, rerr := toolcall.Parse(req, toolcall.HeadersOf(req), toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/"})
	if rerr != nil {
		t.Fatalf("ParseCall(%s): %v", body, rerr)
	}
	return call.ArgsSHA256
}

func TestTokenMintInspect(t *testing.T) {
	dir := t.TempDir()
	keyFiles := map[string]string{}
	for _, alg := range []string{approval.AlgEdDSA, approval.AlgES256, approval.AlgRS256} {
		keyFiles[alg] = keysGen(t, dir, "--alg", alg, "--kid", strings.ToLower(alg)).PrivateKey
	}
	jwks := filepath.Join(dir, "jwks.json")
	env := map[string]string{"SECRET": testSecret, "USER": "alice"}
	const args = `{"path":"/tmp/x","content":"hi"}`

	tests := []struct {
		name    string
		keyArgs []string // how mint signs
		verify  []string // how inspect verifies
	}{
		{"EdDSA", []string{"--key", keyFiles[approval.AlgEdDSA]}, []string{"--jwks", jwks}},
		{"ES256", []string{"--key", keyFiles[approval.AlgES256]}, []string{"--jwks", jwks}},
		{"RS256", []string{"--key", keyFiles[approval.AlgRS256]}, []string{"--jwks", jwks}},
		{"HS256", []string{"--secret-env", "SECRET"}, []string{"--secret-env", "SECRET"}},
		{"HS256 beside a JWKS", []string{"--secret-env", "SECRET"}, []string{"--jwks", jwks, "--secret-env", "SECRET"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mint(t, env, append(tt.keyArgs, "--sub", "agent-7", "--aud", "tools.example,other.example",
				"--tool", "write_file", "--args", args, "--run-id", "run-1", "--proposal-id", "p-1", "--ttl", "2m")...)
			if m.ArgsSHA256 != callSHA256(t, "write_file", args) {
				t.Errorf("mint args_sha256 = %s, want the sidecar's %s", m.ArgsSHA256, callSHA256(t, "write_file", args))
			}
			exp, err := time.Parse(time.RFC3339, m.Exp)
			if err != nil || time.Until(exp) > 2*time.Minute || time.Until(exp) < 110*time.Second {
				t.Errorf("mint exp = %q (%v), want about 2m from now", m.Exp, err)
			}

			code, r := inspect(t, env, "", append(tt.verify, m.Token, "--tool", "write_file", "--args", `{"content":"hi","path":"/tmp/x"}`)...)
			if code != exitOK || r.Valid != validOK || !r.Verified || r.Binding == nil || r.Binding.Result != validOK {
				t.Fatalf("inspect(minted %s) = exit %d, %+v, want exit 0, valid and bound", tt.name, code, r)
			}
			if r.Audience != "tools.example" {
				t.Errorf("inspect audience = %q, want the token's first aud", r.Audience)
			}
			ext, _ := r.Claims["m1"].(map[string]any)
			for name, want := range map[string]any{"sub": "agent-7", "iss": "m1-cli", "jti": m.JTI} {
				if r.Claims[name] != want {
					t.Errorf("claims[%s] = %v, want %v", name, r.Claims[name], want)
				}
			}
			if act, _ := r.Claims["act"].(map[string]any); act["sub"] != "alice" {
				t.Errorf("act = %v, want {sub: alice} from $USER", r.Claims["act"])
			}
			if ext["kind"] != "approval" || ext["tool"] != "write_file" || ext["run_id"] != "run-1" || ext["proposal_id"] != "p-1" {
				t.Errorf("claims.m1 = %v", ext)
			}
			if r.ArgsSHA256 != m.ArgsSHA256 || r.Times["exp"] != m.Exp {
				t.Errorf("inspect args_sha256, exp = %s, %s, want %s, %s", r.ArgsSHA256, r.Times["exp"], m.ArgsSHA256, m.Exp)
			}
			if r.Header["typ"] != approval.TokenType {
				t.Errorf("header typ = %v", r.Header["typ"])
			}
		})
	}

	// One token, inspected in every way.
	m := mint(t, env, "--key", keyFiles[approval.AlgEdDSA], "--sub", "agent-7", "--aud", "tools.example", "--tool", "write_file", "--args", args)
	parts := strings.Split(m.Token, ".")
	tampered := parts[0] + "." + parts[1] + "x." + parts[2]
	inspections := []struct {
		name        string
		stdin       string
		args        []string
		wantCode    int
		wantValid   string
		wantBinding string // "" for no binding check
	}{
		{"not verified", "", []string{m.Token}, exitOK, validNotVerified, ""},
		{"from stdin", m.Token + "\n", []string{"-", "--jwks", jwks}, exitOK, validOK, ""},
		{"Bearer prefix", "Bearer " + m.Token, []string{"-", "--jwks", jwks}, exitOK, validOK, ""},
		{"other audience", "", []string{m.Token, "--jwks", jwks, "--aud", "billing.example"}, exitDeny, deny.AudienceMismatch, ""},
		{"audience from M1_AUDIENCE", "", []string{m.Token, "--jwks", jwks}, exitOK, validOK, ""},
		{"tampered", "", []string{tampered, "--jwks", jwks}, exitDeny, deny.TokenInvalid, ""},
		{"garbage", "", []string{"not-a-token"}, exitDeny, deny.TokenInvalid, ""},
		{"trusted issuers exclude it", "", []string{m.Token, "--jwks", jwks, "--trusted-issuers", "ops,ci"}, exitDeny, deny.IssuerUntrusted, ""},
		{"HS256 secret only", "", []string{m.Token, "--secret-env", "SECRET"}, exitDeny, deny.TokenInvalid, ""},
		{"bound, unverified", "", []string{m.Token, "--tool", "write_file", "--args", " { \"path\" : \"/tmp/x\", \"content\" : \"\\u0068i\" } "}, exitOK, validNotVerified, validOK},
		{"other args", "", []string{m.Token, "--jwks", jwks, "--tool", "write_file", "--args", `{"path":"/etc/passwd","content":"hi"}`}, exitDeny, validOK, deny.ArgsMismatch},
		{"extra args", "", []string{m.Token, "--tool", "write_file", "--args", `{"path":"/tmp/x","content":"hi","mode":"0777"}`}, exitDeny, validNotVerified, deny.ArgsMismatch},
		{"other tool", "", []string{m.Token, "--jwks", jwks, "--tool", "run_command", "--args", args}, exitDeny, validOK, deny.ToolMismatch},
		{"args from stdin", args, []string{m.Token, "--jwks", jwks, "--tool", "write_file", "--args", "@-"}, exitOK, validOK, validOK},
	}
	for _, tt := range inspections {
		t.Run("inspect "+tt.name, func(t *testing.T) {
			env := map[string]string{"SECRET": testSecret, "M1_AUDIENCE": "tools.example"}
			if tt.name != "audience from M1_AUDIENCE" {
				delete(env, "M1_AUDIENCE")
			}
			code, r := inspect(t, env, tt.stdin, tt.args...)
			if code != tt.wantCode || r.Valid != tt.wantValid {
				t.Errorf("inspect(%s) = exit %d, valid %q (%s), want exit %d, valid %q", tt.name, code, r.Valid, r.Reason, tt.wantCode, tt.wantValid)
			}
			switch {
			case tt.wantBinding == "" && r.Binding != nil:
				t.Errorf("inspect(%s) binding = %+v, want none", tt.name, r.Binding)
			case tt.wantBinding != "" && (r.Binding == nil || r.Binding.Result != tt.wantBinding):
				t.Errorf("inspect(%s) binding = %+v, want %s", tt.name, r.Binding, tt.wantBinding)
			}
		})
	}
}

func TestTokenInspectHumanOutput(t *testing.T) {
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "k1").PrivateKey
	m := mint(t, nil, "--key", key, "--sub", "agent-7", "--aud", "tools.example", "--tool", "write_file")
	for _, tt := range []struct {
		name     string
		args     []string
		wantCode int
		want     []string
	}{
		{"unverified", []string{m.Token}, exitOK, []string{`"kid": "k1"`, `"sub": "agent-7"`, "exp:         " + m.Exp + " (in ", "args_sha256: " + m.ArgsSHA256, "valid:       signature not verified"}},
		{"verified", []string{m.Token, "--jwks", filepath.Join(dir, "jwks.json"), "--tool", "write_file"}, exitOK, []string{`valid:       ok (verified for audience "tools.example")`, "binding:     ok for write_file"}},
		{"wrong audience", []string{m.Token, "--jwks", filepath.Join(dir, "jwks.json"), "--aud", "x"}, exitDeny, []string{`valid:       audience_mismatch: aud does not contain "x"`}},
	} {
		r := m1With(t, nil, "", append([]string{"token", "inspect"}, tt.args...)...)
		if r.code != tt.wantCode {
			t.Errorf("inspect(%s): exit %d, want %d\n%s", tt.name, r.code, tt.wantCode, r)
		}
		for _, want := range tt.want {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("inspect(%s) output lacks %q:\n%s", tt.name, want, r.stdout)
			}
		}
	}
}

func TestTokenMintArgsHash(t *testing.T) {
	key := keysGen(t, t.TempDir(), "--kid", "k1").PrivateKey
	canonical := `{"a":[1,"x",null,true],"b":{"c":100,"d":0.5},"é":"\u2028"}`
	want := callSHA256(t, "write_file", canonical)
	for _, tt := range []struct{ name, args string }{
		{"canonical", canonical},
		{"members reordered", `{"é":"\u2028","b":{"d":0.5,"c":100},"a":[1,"x",null,true]}`},
		{"white space", " {\n\t\"a\" : [ 1 , \"x\" , null , true ] ,\r\n \"b\":{ \"c\":100,\"d\":0.5 },\"é\":\"\\u2028\" }\n"},
		{"escapes", `{"\u0061":[1,"\u0078",null,true],"b":{"c":100,"d":0.5},"\u00e9":"\u2028"}`},
		{"number spellings", `{"a":[1.0,"x",null,true],"b":{"c":1e2,"d":5E-1},"é":"\u2028"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := mint(t, nil, "--key", key, "--sub", "a", "--aud", "tools", "--tool", "write_file", "--args", tt.args)
			if m.ArgsSHA256 != want {
				t.Errorf("mint --args %s: args_sha256 = %s, want %s (toolcall.Parse of the canonical form)", tt.args, m.ArgsSHA256, want)
			}
		})
	}

	// No --args is {}, as for a call without arguments; an --args file works.
	file := filepath.Join(t.TempDir(), "args.json")
	if err := os.WriteFile(file, []byte(canonical), 0o600); err != nil {
		t.Fatal(err)
	}
	if m := mint(t, nil, "--key", key, "--sub", "a", "--aud", "tools", "--tool", "t"); m.ArgsSHA256 != callSHA256(t, "t", "{}") {
		t.Errorf("mint without --args: args_sha256 = %s, want that of {}", m.ArgsSHA256)
	}
	if m := mint(t, nil, "--key", key, "--sub", "a", "--aud", "tools", "--tool", "write_file", "--args", "@"+file); m.ArgsSHA256 != want {
		t.Errorf("mint --args @file: args_sha256 = %s, want %s", m.ArgsSHA256, want)
	}
}

func TestTokenMintRefusesBadArgs(t *testing.T) {
	key := keysGen(t, t.TempDir(), "--kid", "k1").PrivateKey
	for _, tt := range []struct{ name, args, wantStderr string }{
		{"duplicate member", `{"path":"/tmp/x","path":"/etc/passwd"}`, "duplicate"},
		{"2^53+1", `{"n":9007199254740993}`, deny.NumberNotCanonical},
		{"huge exponent", `{"n":1e400}`, deny.NumberNotCanonical},
		{"array", `[1,2]`, "not a JSON object"},
		{"string", `"x"`, "not a JSON object"},
		{"invalid JSON", `{"a":`, deny.BadRequest},
		{"trailing value", `{} {}`, deny.BadRequest},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", deny.BadRequest},
		{"too deep", strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70), "deeper"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, nil, "", "token", "mint", "--key", key, "--sub", "a", "--aud", "tools", "--tool", "write_file", "--args", tt.args)
			if r.code != exitError || r.stdout != "" {
				t.Fatalf("mint --args %q: exit %d, stdout %q; want exit 2 and no token\n%s", tt.args, r.code, r.stdout, r)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("mint --args %q: stderr lacks %q:\n%s", tt.args, tt.wantStderr, r.stderr)
			}
		})
	}
}

func TestTokenMintFlags(t *testing.T) {
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "k1").PrivateKey
	jwks := filepath.Join(dir, "jwks.json")
	base := []string{"token", "mint", "--key", key, "--sub", "agent", "--aud", "tools"}
	tests := []struct {
		name       string
		args       []string // after base, unless noBase
		noBase     bool
		env        map[string]string
		wantCode   int
		wantStderr string
	}{
		{"approval", []string{"--tool", "write_file"}, false, nil, exitOK, ""},
		{"grant", []string{"--grant", "--tools", "fs.*,run_command", "--max-uses", "3"}, false, nil, exitOK, ""},
		{"grant without --tools", []string{"--grant", "--max-uses", "3"}, false, nil, exitError, "--grant needs --tools and --max-uses"},
		{"grant without --max-uses", []string{"--grant", "--tools", "a"}, false, nil, exitError, "--grant needs --tools and --max-uses"},
		{"grant with --max-uses 0", []string{"--grant", "--tools", "a", "--max-uses", "0"}, false, nil, exitError, "at least 1"},
		{"grant of a bare *", []string{"--grant", "--tools", "*", "--max-uses", "1"}, false, nil, exitError, "bare *"},
		{"grant of a bare * in a list", []string{"--grant", "--tools", "a, *", "--max-uses", "1"}, false, nil, exitError, "bare *"},
		{"grant with an empty pattern", []string{"--grant", "--tools", "a,,b", "--max-uses", "1"}, false, nil, exitError, "empty element"},
		{"grant with a bad pattern", []string{"--grant", "--tools", "a*b", "--max-uses", "1"}, false, nil, exitError, `"a*b"`},
		{"grant with --tool", []string{"--grant", "--tools", "a", "--max-uses", "1", "--tool", "a"}, false, nil, exitError, "not --tool or --args"},
		{"grant with --args", []string{"--grant", "--tools", "a", "--max-uses", "1", "--args", "{}"}, false, nil, exitError, "not --tool or --args"},
		{"--tools without --grant", []string{"--tool", "a", "--tools", "a"}, false, nil, exitError, "need --grant"},
		{"--max-uses without --grant", []string{"--tool", "a", "--max-uses", "2"}, false, nil, exitError, "need --grant"},
		{"approval without --tool", nil, false, nil, exitError, "--tool is required"},
		{"bad tool name", []string{"--tool", "a/b"}, false, nil, exitError, `tool "a/b"`},
		{"tool name with a query", []string{"--tool", "a?b=c"}, false, nil, exitError, `tool "a?b=c"`},
		{"no key", []string{"token", "mint", "--sub", "a", "--aud", "t", "--tool", "t"}, true, nil, exitError, "a key is required"},
		{"key from M1_SIGNING_KEY", []string{"token", "mint", "--sub", "a", "--aud", "t", "--tool", "t"}, true, map[string]string{"M1_SIGNING_KEY": key}, exitOK, ""},
		{"key and secret", []string{"--secret-env", "SECRET", "--tool", "t"}, false, map[string]string{"SECRET": testSecret}, exitError, "cannot be combined"},
		{"secret not set", []string{"token", "mint", "--secret-env", "NOPE", "--sub", "a", "--aud", "t", "--tool", "t"}, true, nil, exitError, "$NOPE is not set"},
		{"short secret", []string{"token", "mint", "--secret-env", "SECRET", "--sub", "a", "--aud", "t", "--tool", "t"}, true, map[string]string{"SECRET": "short-secret-value"}, exitError, "at least 32 bytes"},
		{"missing key file", []string{"token", "mint", "--key", filepath.Join(dir, "nope.jwk"), "--sub", "a", "--aud", "t", "--tool", "t"}, true, nil, exitError, "nope.jwk"},
		{"public key file", []string{"token", "mint", "--key", jwks, "--sub", "a", "--aud", "t", "--tool", "t"}, true, nil, exitError, "load signing key"},
		{"no --sub", []string{"token", "mint", "--key", key, "--aud", "t", "--tool", "t"}, true, nil, exitError, "--sub is required"},
		{"no --aud", []string{"token", "mint", "--key", key, "--sub", "a", "--tool", "t"}, true, nil, exitError, "--aud (or $M1_AUDIENCE) is required"},
		{"aud from M1_AUDIENCE", []string{"token", "mint", "--key", key, "--sub", "a", "--tool", "t"}, true, map[string]string{"M1_AUDIENCE": "tools"}, exitOK, ""},
		{"ttl within the limit", []string{"--tool", "t", "--ttl", "10m"}, false, map[string]string{"M1_APPROVAL_TOKEN_TTL_MINUTES": "10"}, exitOK, ""},
		{"ttl over the limit", []string{"--tool", "t", "--ttl", "6m"}, false, map[string]string{"M1_APPROVAL_TOKEN_TTL_MINUTES": "5"}, exitError, "token_ttl_exceeded"},
		{"ttl over the flag limit", []string{"--tool", "t", "--ttl", "3m", "--max-ttl-minutes", "2"}, false, nil, exitError, "exceeds"},
		{"zero ttl", []string{"--tool", "t", "--ttl", "0s"}, false, nil, exitError, "at least 1s"},
		{"nbf-skew not below ttl", []string{"--tool", "t", "--ttl", "1m", "--nbf-skew", "1m"}, false, nil, exitError, "--nbf-skew"},
		{"negative nbf-skew", []string{"--tool", "t", "--nbf-skew", "-1s"}, false, nil, exitError, "--nbf-skew"},
		{"positional argument", []string{"--tool", "t", "extra"}, false, nil, exitError, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if !tt.noBase {
				args = append(slices.Clone(base), tt.args...)
			}
			r := m1With(t, tt.env, "", args...)
			if r.code != tt.wantCode {
				t.Fatalf("m1 %s: exit %d, want %d\n%s", strings.Join(args, " "), r.code, tt.wantCode, r)
			}
			if !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %s: stderr lacks %q\n%s", strings.Join(args, " "), tt.wantStderr, r)
			}
			if tt.wantCode != exitOK {
				if r.stdout != "" {
					t.Errorf("m1 %s: stdout %q on failure, want nothing", strings.Join(args, " "), r.stdout)
				}
				return
			}
			// On success stdout is the token and a newline, nothing else.
			token, ok := strings.CutSuffix(r.stdout, "\n")
			if !ok || strings.ContainsAny(token, " \n") || r.stderr != "" {
				t.Fatalf("m1 %s: stdout %q, stderr %q; want only the token", strings.Join(args, " "), r.stdout, r.stderr)
			}
			if code, res := inspect(t, nil, "", token, "--jwks", jwks, "--max-ttl-minutes", "10"); code != exitOK {
				t.Errorf("inspect(minted %s) = exit %d, %s: %s", tt.name, code, res.Valid, res.Reason)
			}
		})
	}
	if r := m1With(t, nil, "", "token", "mint", "--secret-env", "SECRET", "--sub", "a", "--aud", "t", "--tool", "t"); strings.Contains(r.String(), "short-secret-value") || strings.Contains(r.String(), testSecret) {
		t.Errorf("mint echoed the secret:\n%s", r)
	}
}

func TestTokenMintGrant(t *testing.T) {
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "k1").PrivateKey
	jwks := filepath.Join(dir, "jwks.json")
	m := mint(t, nil, "--key", key, "--sub", "agent", "--aud", "tools", "--grant", "--tools", "fs.*,run_command", "--max-uses", "3")
	if m.ArgsSHA256 != "" {
		t.Errorf("grant args_sha256 = %q, want none", m.ArgsSHA256)
	}
	for _, tt := range []struct {
		tool, want string
	}{
		{"fs.read", validOK},
		{"fs.write", validOK},
		{"run_command", validOK},
		{"run_commands", deny.ToolMismatch},
		{"fs", deny.ToolMismatch},
	} {
		_, r := inspect(t, nil, "", m.Token, "--jwks", jwks, "--tool", tt.tool, "--args", `{"any":"thing"}`)
		if r.Kind != approval.KindGrant || r.Valid != validOK || r.Binding == nil || r.Binding.Result != tt.want {
			t.Errorf("inspect(grant, --tool %s) = kind %s, valid %s, binding %+v; want grant, ok, %s", tt.tool, r.Kind, r.Valid, r.Binding, tt.want)
		}
		ext, _ := r.Claims["m1"].(map[string]any)
		if ext["max_uses"] != 3.0 {
			t.Errorf("grant max_uses = %v, want 3", ext["max_uses"])
		}
	}
}

func TestTokenMintTimes(t *testing.T) {
	key := keysGen(t, t.TempDir(), "--kid", "k1").PrivateKey
	for _, tt := range []struct {
		name          string
		args          []string
		wantSkew, ttl time.Duration
	}{
		{"default", nil, 0, 5 * time.Minute},
		{"ttl", []string{"--ttl", "90s"}, 0, 90 * time.Second},
		{"nbf-skew", []string{"--ttl", "3m", "--nbf-skew", "1m"}, time.Minute, 3 * time.Minute},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			m := mint(t, nil, append([]string{"--key", key, "--sub", "a", "--aud", "t", "--tool", "t", "--jti", "j-" + tt.name}, tt.args...)...)
			after := time.Now()
			_, r := inspect(t, nil, "", m.Token)
			if r.Claims["jti"] != "j-"+tt.name || m.JTI != "j-"+tt.name {
				t.Errorf("jti = %v, %q, want %q", r.Claims["jti"], m.JTI, "j-"+tt.name)
			}
			iat := time.Unix(int64(r.Claims["iat"].(float64)), 0)
			nbf := time.Unix(int64(r.Claims["nbf"].(float64)), 0)
			exp := time.Unix(int64(r.Claims["exp"].(float64)), 0)
			if issued := iat.Add(tt.wantSkew); issued.Before(before) || issued.After(after) || !nbf.Equal(iat) {
				t.Errorf("iat, nbf = %v, %v; want both %v before now", iat, nbf, tt.wantSkew)
			}
			if exp.Sub(iat) != tt.ttl {
				t.Errorf("exp - iat = %v, want %v", exp.Sub(iat), tt.ttl)
			}
		})
	}
}

func TestTokenKeysRevokeHelp(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"listed in m1 help", []string{"help"}, exitOK, "  revoke     revoke approval tokens", ""},
		{"keys", []string{"keys"}, exitError, "", "m1 keys gen"},
		{"keys -h", []string{"keys", "-h"}, exitOK, "m1 keys gen", ""},
		{"keys unknown", []string{"keys", "rotate"}, exitError, "", `unknown command "rotate"`},
		{"help keys gen", []string{"help", "keys", "gen"}, exitOK, "$M1_JWT_ALGORITHM", ""},
		{"token", []string{"token"}, exitError, "", "m1 token inspect"},
		{"token help", []string{"token", "help"}, exitOK, "m1 token mint", ""},
		{"token unknown", []string{"token", "verify"}, exitError, "", `unknown command "verify"`},
		{"token mint -h", []string{"token", "mint", "-h"}, exitOK, "$M1_SIGNING_KEY", ""},
		{"help token inspect", []string{"help", "token", "inspect"}, exitOK, "--jwks file", ""},
		{"inspect without a token", []string{"token", "inspect"}, exitError, "", "missing arguments"},
		{"inspect --args without --tool", []string{"token", "inspect", "x.y.z", "--args", "{}"}, exitError, "", "--args needs --tool"},
		{"inspect bad --args", []string{"token", "inspect", "x.y.z", "--tool", "t", "--args", `{"a":1,"a":2}`}, exitError, "", "duplicate"},
		{"inspect missing JWKS", []string{"token", "inspect", "x.y.z", "--jwks", "/nonexistent/jwks.json"}, exitError, "", "load jwks"},
		{"revoke -h", []string{"revoke", "-h"}, exitOK, "$M1_ADMIN_TOKEN", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, nil, "", tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("m1 %s: exit %d, want %d\n%s", strings.Join(tt.args, " "), r.code, tt.wantCode, r)
			}
			if !strings.Contains(r.stdout, tt.wantStdout) || !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %s: want stdout with %q, stderr with %q\n%s", strings.Join(tt.args, " "), tt.wantStdout, tt.wantStderr, r)
			}
		})
	}
}

// A bad --tool is reported as --tool's, not as --args'.
func TestTokenBadToolNamesTool(t *testing.T) {
	key := keysGen(t, t.TempDir(), "--kid", "k1").PrivateKey
	m := mint(t, nil, "--key", key, "--sub", "a", "--aud", "tools", "--tool", "t")
	for _, tt := range []struct {
		name string
		args []string
	}{
		{"mint", []string{"token", "mint", "--key", key, "--sub", "a", "--aud", "tools", "--tool", "bad name"}},
		{"mint with --args", []string{"token", "mint", "--key", key, "--sub", "a", "--aud", "tools", "--tool", "bad name", "--args", `{"a":1}`}},
		{"inspect", []string{"token", "inspect", m.Token, "--tool", "bad name"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, nil, "", tt.args...)
			if r.code != exitError || r.stdout != "" {
				t.Fatalf("m1 %s: exit %d, stdout %q; want exit 2 and nothing on stdout\n%s", strings.Join(tt.args, " "), r.code, r.stdout, r)
			}
			first, _, _ := strings.Cut(r.stderr, "\n")
			if !strings.Contains(first, `--tool: tool "bad name"`) || strings.Contains(first, "--args") {
				t.Errorf("m1 %s: error %q, want it to name --tool (and not --args)", strings.Join(tt.args, " "), first)
			}
		})
	}
}

// A lifetime (or backdating) that is not whole seconds is refused, not
// truncated: the token could only carry whole seconds.
func TestSigningRefusesFractionalSeconds(t *testing.T) {
	key := keysGen(t, t.TempDir(), "--kid", "k1").PrivateKey
	mintBase := []string{"token", "mint", "--key", key, "--sub", "a", "--aud", "tools", "--tool", "t"}
	grantBase := []string{"grant", "--key", key, "--agent", "a", "--aud", "tools", "--tools", "t", "--max-uses", "1", "--operator", "op"}
	for _, tt := range []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"mint --ttl 1500ms", append(slices.Clone(mintBase), "--ttl", "1500ms"), exitError, "--ttl 1.5s: must be a whole number of seconds"},
		{"mint --ttl 90.5s", append(slices.Clone(mintBase), "--ttl", "90.5s"), exitError, "--ttl 1m30.5s: must be a whole number of seconds"},
		{"mint --ttl 2m", append(slices.Clone(mintBase), "--ttl", "2m"), exitOK, ""},
		{"mint --nbf-skew 1500ms", append(slices.Clone(mintBase), "--nbf-skew", "1500ms"), exitError, "--nbf-skew 1.5s: must be a whole number of seconds"},
		{"grant --ttl 1500ms", append(slices.Clone(grantBase), "--ttl", "1500ms"), exitError, "--ttl 1.5s: must be a whole number of seconds"},
		{"grant --ttl 90s", append(slices.Clone(grantBase), "--ttl", "90s"), exitOK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := m1With(t, nil, "", tt.args...)
			if r.code != tt.wantCode {
				t.Fatalf("m1 %s: exit %d, want %d\n%s", strings.Join(tt.args, " "), r.code, tt.wantCode, r)
			}
			if tt.wantCode != exitOK && (r.stdout != "" || !strings.Contains(r.stderr, tt.wantStderr)) {
				t.Errorf("m1 %s: stdout %q, stderr %q; want no token and %q", strings.Join(tt.args, " "), r.stdout, r.stderr, tt.wantStderr)
			}
		})
	}
}

// Flags that only matter to verification need a key to verify with; an
// empty token is an error, not a malformed token.
func TestTokenInspectUsage(t *testing.T) {
	dir := t.TempDir()
	key := keysGen(t, dir, "--kid", "k1").PrivateKey
	jwks := filepath.Join(dir, "jwks.json")
	m := mint(t, nil, "--key", key, "--sub", "a", "--aud", "tools", "--tool", "t")
	for _, tt := range []struct {
		name       string
		env        map[string]string
		stdin      string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"--aud without --jwks", nil, "", []string{m.Token, "--aud", "other"}, exitError, "--aud needs --jwks"},
		{"--clock-skew without --jwks", nil, "", []string{m.Token, "--clock-skew", "1m"}, exitError, "--clock-skew needs --jwks"},
		{"--max-ttl-minutes without --jwks", nil, "", []string{m.Token, "--max-ttl-minutes", "5"}, exitError, "--max-ttl-minutes needs --jwks"},
		{"--trusted-issuers without --jwks", nil, "", []string{m.Token, "--trusted-issuers", "m1-cli"}, exitError, "--trusted-issuers needs --jwks"},
		{"several without --jwks", nil, "", []string{m.Token, "--trusted-issuers", "x", "--aud", "other"}, exitError, "--aud, --trusted-issuers need --jwks"},
		{"--aud with --jwks", nil, "", []string{m.Token, "--aud", "other", "--jwks", jwks}, exitDeny, ""},
		{"--aud with $M1_JWKS_FILE", map[string]string{"M1_JWKS_FILE": jwks}, "", []string{m.Token, "--aud", "tools"}, exitOK, ""},
		{"$M1_AUDIENCE without --jwks", map[string]string{"M1_AUDIENCE": "other", "M1_CLOCK_SKEW": "1m"}, "", []string{m.Token}, exitOK, ""},
		{"--tool without --jwks", nil, "", []string{m.Token, "--tool", "t"}, exitOK, ""},
		{"empty stdin", nil, "", []string{"-"}, exitError, "no token"},
		{"blank stdin", nil, " \n\t\n", []string{"-"}, exitError, "no token"},
		{"empty argument", nil, "", []string{""}, exitError, "no token"},
		{"token on stdin", nil, m.Token + "\n", []string{"-"}, exitOK, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"token", "inspect"}, tt.args...)
			r := m1With(t, tt.env, tt.stdin, args...)
			if r.code != tt.wantCode {
				t.Fatalf("m1 %q: exit %d, want %d\n%s", args, r.code, tt.wantCode, r)
			}
			if tt.wantCode == exitError && (r.stdout != "" || !strings.Contains(r.stderr, tt.wantStderr)) {
				t.Errorf("m1 %q: stdout %q, stderr %q; want nothing and %q", args, r.stdout, r.stderr, tt.wantStderr)
			}
		})
	}
}
