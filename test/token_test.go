package test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/internal/approval"
)

// Approval-token settings shared by the tests below.
const (
	tokenAud    = "tools.example"       // M1_AUDIENCE of every sidecar here
	tokenHeader = "x-m1-approval-token" // the default M1_APPROVAL_HEADER
	tokenType   = "m1-approval+jwt"
	pollTimeout = 10 * time.Second // bound of every wait for a key reload

	writeFixture  = "mcp-tools-call-write-file-no-token"
	restWrite     = "rest-tools-write-file-no-token"
	mcpPing       = "mcp-ping"
	headerMapList = "rest-tools-list-dir-header-map"
)

// writeArgs are write_file arguments and writeCanon their RFC 8785 (JCS)
// form, written out by hand so that the expected args_sha256 does not come
// from the canonicalizer under test. restCanon is the JCS form of the body
// of rest-tools-write-file-no-token.
const (
	writeArgs  = `{"path":"/w/a.txt","content":"hello","n":1}`
	writeCanon = `{"content":"hello","n":1,"path":"/w/a.txt"}`
	restCanon  = `{"content":"hello","path":"/tmp/out.txt"}`
)

// argsSHA256 is the m1.args_sha256 of arguments whose JCS form is canon.
func argsSHA256(canon string) string {
	sum := sha256.Sum256([]byte(canon))
	return hex.EncodeToString(sum[:])
}

// genKey generates an operator signing key.
func genKey(t *testing.T, alg, kid string) *approval.SigningKey {
	t.Helper()
	k, err := approval.GenerateKey(alg, kid)
	if err != nil {
		t.Fatalf("GenerateKey(%s, %s): %v", alg, kid, err)
	}
	return k
}

// rsaKey is an RS256 signing key of 2048 bits, the smallest M1 accepts
// (GenerateKey makes 3072-bit keys, several times slower under -race).
func rsaKey(t *testing.T, kid string) *approval.SigningKey {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return &approval.SigningKey{KID: kid, Alg: approval.AlgRS256, Key: key}
}

// jwksOf is the public JWKS of keys, in order.
func jwksOf(t *testing.T, keys ...*approval.SigningKey) []byte {
	t.Helper()
	type set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	var all set
	for _, k := range keys {
		b, err := k.PublicJWKS()
		if err != nil {
			t.Fatalf("PublicJWKS(%s): %v", k.KID, err)
		}
		var one set
		if err := json.Unmarshal(b, &one); err != nil {
			t.Fatal(err)
		}
		all.Keys = append(all.Keys, one.Keys...)
	}
	b, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeAtomic replaces path with data the way a careful operator (or a
// ConfigMap) does: a temporary file in the same directory, then a rename,
// so that the sidecar never reads a half-written file.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		t.Fatal(err)
	}
}

// A claimsEdit changes the claims of a token before it is minted.
type claimsEdit func(c *approval.Claims)

// grantOf makes the token a grant for tools, usable maxUses times.
func grantOf(maxUses int, tools ...string) claimsEdit {
	return func(c *approval.Claims) {
		c.Kind, c.Tool, c.ArgsSHA256 = approval.KindGrant, "", ""
		c.Tools, c.MaxUses = tools, maxUses
	}
}

// approvalOf makes the token an approval of one call of tool with the
// arguments whose JCS form is canon.
func approvalOf(tool, canon string) claimsEdit {
	return func(c *approval.Claims) { c.Tool, c.ArgsSHA256 = tool, argsSHA256(canon) }
}

func withSub(sub string) claimsEdit    { return func(c *approval.Claims) { c.Subject = sub } }
func withJTI(jti string) claimsEdit    { return func(c *approval.Claims) { c.ID = jti } }
func withIss(iss string) claimsEdit    { return func(c *approval.Claims) { c.Issuer = iss } }
func withRunID(id string) claimsEdit   { return func(c *approval.Claims) { c.RunID = id } }
func withAud(aud ...string) claimsEdit { return func(c *approval.Claims) { c.Audience = aud } }

// withTimes sets iat, nbf and exp relative to now.
func withTimes(iat, nbf, exp time.Duration) claimsEdit {
	return func(c *approval.Claims) {
		now := time.Now()
		c.IssuedAt, c.NotBefore, c.Expiry = now.Add(iat), now.Add(nbf), now.Add(exp)
	}
}

// mint signs a fresh token with k: by default an approval of write_file
// with writeArgs for agent-42, run run-7, valid for two minutes, then edits.
func mint(t *testing.T, k *approval.SigningKey, edits ...claimsEdit) string {
	t.Helper()
	now := time.Now()
	c := approval.Claims{
		Issuer: "m1-cli", Subject: "agent-42", Actor: "alice", Audience: []string{tokenAud},
		IssuedAt: now, Expiry: now.Add(2 * time.Minute),
		Kind: approval.KindApproval, Tool: "write_file", ArgsSHA256: argsSHA256(writeCanon),
		RunID: "run-7", ProposalID: "prop-1",
	}
	for _, e := range edits {
		e(&c)
	}
	tok, err := approval.Mint(k, c)
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	return tok
}

var b64 = base64.RawURLEncoding

// forge puts the payload of tok under another protected header and signs
// it with sign (nil: no signature), for tokens Mint refuses to write.
func forge(tok, header string, sign func(input string) []byte) string {
	payload := strings.Split(tok, ".")[1]
	input := b64.EncodeToString([]byte(header)) + "." + payload
	var sig []byte
	if sign != nil {
		sig = sign(input)
	}
	return input + "." + b64.EncodeToString(sig)
}

// edSign signs with an EdDSA key.
func edSign(k *approval.SigningKey) func(string) []byte {
	return func(in string) []byte { return ed25519.Sign(k.Key.(ed25519.PrivateKey), []byte(in)) }
}

// hmacSign signs HS256 with secret.
func hmacSign(secret []byte) func(string) []byte {
	return func(in string) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(in))
		return m.Sum(nil)
	}
}

// hdr is a JWS protected header with alg, kid (omitted when "") and typ
// (omitted when "").
func hdr(alg, kid, typ string) string {
	h := map[string]string{"alg": alg}
	if kid != "" {
		h["kid"] = kid
	}
	if typ != "" {
		h["typ"] = typ
	}
	b, _ := json.Marshal(h)
	return string(b)
}

// call is the MCP tools/call of tool with raw JSON arguments (none when
// args is "").
func call(tool, args string) edit {
	p := `{"name":"` + tool + `"`
	if args != "" {
		p += `,"arguments":` + args
	}
	return withBody(mcpCall(p + `}`))
}

// withToken sends tok in the approval header.
func withToken(tok string) edit { return withHeader(tokenHeader, tok) }

// startWithKeys starts a sidecar that verifies tokens with the JWKS of keys
// (in a file of its own, returned) for audience tokenAud, given by env.
func startWithKeys(t *testing.T, keys []*approval.SigningKey, args ...string) (*sidecar, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "jwks.json")
	writeAtomic(t, path, jwksOf(t, keys...))
	s := startSidecar(t, append([]string{"--jwks-file", path}, args...), "M1_AUDIENCE="+tokenAud)
	return s, path
}

// step is one Check of a scenario.
type step struct {
	name    string
	fixture string
	edits   []edit
	want    want
}

// run sends the steps in order with tok in the approval header.
func (s *sidecar) run(t *testing.T, scenario, tok string, steps []step) {
	t.Helper()
	for i, st := range steps {
		edits := append(slices.Clone(st.edits), withToken(tok))
		name := fmt.Sprintf("%s: %d %s", scenario, i+1, st.name)
		expect(t, name, s.check(t, request(t, st.fixture, edits...)), st.want)
	}
}

// adminDo sends an admin API request with "Authorization: Bearer token"
// when token is not empty.
func (s *sidecar) adminDo(t *testing.T, method, path, token, body string) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+s.AdminAddr+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: httpTimeout}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// keysCheck returns the keys check of /health, with its kids.
func (s *sidecar) keysCheck(t *testing.T) (status, detail string, kids []string, doc healthDoc) {
	t.Helper()
	code, doc := s.health(t)
	if code != http.StatusOK {
		t.Errorf("GET /health = %d, want 200", code)
	}
	c, ok := doc.Checks["keys"]
	if !ok {
		t.Fatalf("/health has no keys check: %+v", doc)
	}
	raw, _ := c.Info["kids"].([]any)
	for _, k := range raw {
		kid, _ := k.(string)
		kids = append(kids, kid)
	}
	return c.Status, c.Detail, kids, doc
}

// poll calls cond until it reports true, or fails t after pollTimeout
// with cond's last description of what it saw and returns false.
func poll(t *testing.T, what string, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: not within %v; last seen: %s", what, pollTimeout, last)
			return false
		}
		<-tick.C
	}
}

// outcomeOf is the outcome of one Check, for polling.
func (s *sidecar) outcomeOf(t *testing.T, req *authv3.CheckRequest) want {
	t.Helper()
	got, doc, err := outcome(s.check(t, req), false)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if !got.allow {
		got.reason = doc.Reason
	}
	return got
}

// TestApprovalTokens runs approval tokens through the real binary with a
// JWKS of EdDSA, ES256 and RS256 keys: every hard check of DESIGN §4 and
// their order, argument binding across JCS-equivalent bodies, single use
// under concurrency, grants, tokens on non-tool calls, revocation through
// the admin API, the headers of an allow, /health and the metrics.
func TestApprovalTokens(t *testing.T) {
	t.Parallel()
	a, a2, e := genKey(t, "EdDSA", "kid-a"), genKey(t, "EdDSA", "kid-a2"), genKey(t, "ES256", "kid-e")
	r := rsaKey(t, "kid-r")
	stranger := genKey(t, "EdDSA", "kid-x") // not in the JWKS
	s, jwksPath := startWithKeys(t, []*approval.SigningKey{a, a2, e, r},
		"--trusted-issuers", "m1-cli, ops", "--approval-token-ttl-minutes", "3", "--clock-skew", "5s")

	rsaPub, err := x509.MarshalPKIXPublicKey(r.Key.Public())
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	edPub := []byte(a.Key.Public().(ed25519.PublicKey))

	t.Run("hard checks", func(t *testing.T) {
		write := []edit{call("write_file", writeArgs)}
		tests := []struct {
			name    string
			token   func(t *testing.T) string
			fixture string // writeFixture when ""
			edits   []edit // write when nil
			want    want
		}{
			// Keys and algorithms.
			{"EdDSA", func(t *testing.T) string { return mint(t, a) }, "", nil, allow},
			{"second EdDSA key", func(t *testing.T) string { return mint(t, a2) }, "", nil, allow},
			{"ES256", func(t *testing.T) string { return mint(t, e) }, "", nil, allow},
			{"RS256", func(t *testing.T) string { return mint(t, r) }, "", nil, allow},
			{"Bearer prefix", func(t *testing.T) string { return "Bearer " + mint(t, a) }, "", nil, allow},
			{"typ application/ upper case", func(t *testing.T) string {
				return forge(mint(t, a), hdr("EdDSA", "kid-a", "application/M1-Approval+JWT"), edSign(a))
			}, "", nil, allow},
			{"alg none", func(t *testing.T) string { return forge(mint(t, a), hdr("none", "kid-a", tokenType), nil) }, "", nil, deny(401, "token_invalid")},
			{"alg none without kid", func(t *testing.T) string { return forge(mint(t, a), hdr("none", "", tokenType), nil) }, "", nil, deny(401, "token_invalid")},
			{"HS256 keyed with the Ed25519 public key", func(t *testing.T) string {
				return forge(mint(t, a), hdr("HS256", "kid-a", tokenType), hmacSign(edPub))
			}, "", nil, deny(401, "token_invalid")},
			{"HS256 keyed with the Ed25519 public key, no kid", func(t *testing.T) string {
				return forge(mint(t, a), hdr("HS256", "", tokenType), hmacSign(edPub))
			}, "", nil, deny(401, "token_invalid")},
			{"HS256 keyed with the RSA public key PEM", func(t *testing.T) string {
				return forge(mint(t, r), hdr("HS256", "kid-r", tokenType), hmacSign(rsaPEM))
			}, "", nil, deny(401, "token_invalid")},
			{"EdDSA alg on the RSA key", func(t *testing.T) string {
				return forge(mint(t, a), hdr("EdDSA", "kid-r", tokenType), edSign(a))
			}, "", nil, deny(401, "token_invalid")},
			{"another key's kid", func(t *testing.T) string {
				return forge(mint(t, a), hdr("EdDSA", "kid-a2", tokenType), edSign(a))
			}, "", nil, deny(401, "token_invalid")},
			{"unknown kid", func(t *testing.T) string { return mint(t, stranger) }, "", nil, deny(401, "token_invalid")},
			{"no kid without a secret", func(t *testing.T) string {
				return forge(mint(t, a), hdr("EdDSA", "", tokenType), edSign(a))
			}, "", nil, deny(401, "token_invalid")},
			{"payload swapped", func(t *testing.T) string {
				good, other := strings.Split(mint(t, a), "."), strings.Split(mint(t, a, withSub("root")), ".")
				return good[0] + "." + other[1] + "." + good[2]
			}, "", nil, deny(401, "token_invalid")},
			{"not a JWS", func(t *testing.T) string { return "not-a-token" }, "", nil, deny(401, "token_invalid")},
			{"empty header", func(t *testing.T) string { return "" }, "", nil, deny(401, "token_invalid")},
			{"typ JWT", func(t *testing.T) string { return forge(mint(t, a), hdr("EdDSA", "kid-a", "JWT"), edSign(a)) }, "", nil, deny(401, "token_invalid")},
			{"no typ", func(t *testing.T) string { return forge(mint(t, a), hdr("EdDSA", "kid-a", ""), edSign(a)) }, "", nil, deny(401, "token_invalid")},

			// Times: --clock-skew 5s, --approval-token-ttl-minutes 3.
			{"expired", func(t *testing.T) string {
				return mint(t, a, withTimes(-2*time.Minute, -2*time.Minute, -10*time.Second))
			}, "", nil, deny(401, "token_expired")},
			{"expired within the clock skew", func(t *testing.T) string { return mint(t, a, withTimes(-time.Minute, -time.Minute, -time.Second)) }, "", nil, allow},
			{"nbf in the future", func(t *testing.T) string { return mint(t, a, withTimes(0, time.Minute, 2*time.Minute)) }, "", nil, deny(401, "token_not_yet_valid")},
			{"iat in the future", func(t *testing.T) string { return mint(t, a, withTimes(time.Minute, 0, 2*time.Minute)) }, "", nil, deny(401, "token_not_yet_valid")},
			{"exp - iat over the maximum", func(t *testing.T) string { return mint(t, a, withTimes(0, 0, 4*time.Minute)) }, "", nil, deny(401, "token_ttl_exceeded")},
			{"exp - iat at the maximum", func(t *testing.T) string { return mint(t, a, withTimes(0, 0, 3*time.Minute)) }, "", nil, allow},

			// Audience and issuer.
			{"wrong aud", func(t *testing.T) string { return mint(t, a, withAud("other.example")) }, "", nil, deny(401, "audience_mismatch")},
			{"aud list with ours", func(t *testing.T) string { return mint(t, a, withAud("other.example", tokenAud)) }, "", nil, allow},
			{"untrusted issuer", func(t *testing.T) string { return mint(t, a, withIss("mallory")) }, "", nil, deny(401, "issuer_untrusted")},
			{"second trusted issuer", func(t *testing.T) string { return mint(t, a, withIss("ops")) }, "", nil, allow},

			// The first failing check decides.
			{"expired and wrong aud", func(t *testing.T) string {
				return mint(t, a, withTimes(-2*time.Minute, -2*time.Minute, -10*time.Second), withAud("other.example"))
			}, "", nil, deny(401, "token_expired")},
			{"wrong typ and expired", func(t *testing.T) string {
				return forge(mint(t, a, withTimes(-2*time.Minute, -2*time.Minute, -10*time.Second)), hdr("EdDSA", "kid-a", "JWT"), edSign(a))
			}, "", nil, deny(401, "token_invalid")},
			{"not yet valid and over the maximum TTL", func(t *testing.T) string { return mint(t, a, withTimes(0, time.Minute, 4*time.Minute)) }, "", nil, deny(401, "token_not_yet_valid")},
			{"over the maximum TTL and wrong aud", func(t *testing.T) string { return mint(t, a, withTimes(0, 0, 4*time.Minute), withAud("x")) }, "", nil, deny(401, "token_ttl_exceeded")},
			{"wrong aud and untrusted issuer", func(t *testing.T) string { return mint(t, a, withAud("x"), withIss("mallory")) }, "", nil, deny(401, "audience_mismatch")},
			{"untrusted issuer and other tool", func(t *testing.T) string { return mint(t, a, withIss("mallory")) }, "", []edit{call("run_command", writeArgs)}, deny(401, "issuer_untrusted")},

			// Binding to the call.
			{"REST write_file", func(t *testing.T) string { return mint(t, a, approvalOf("write_file", restCanon)) }, restWrite, []edit{}, allow},
			{"REST other tool", func(t *testing.T) string { return mint(t, a, approvalOf("write_file", restCanon)) }, restWrite, []edit{withPath("/tools/run_command")}, deny(403, "tool_mismatch")},
			{"JCS: key order", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"n":1,"path":"/w/a.txt","content":"hello"}`)}, allow},
			{"JCS: white space", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", "{ \"path\" : \"/w/a.txt\",\n\t\"content\":\"hello\" , \"n\" : 1 }")}, allow},
			{"JCS: \\u escapes", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"p\u0061th":"\/w\/a.txt","content":"h\u0065llo","n":1}`)}, allow},
			{"JCS: 1.0 for 1", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"path":"/w/a.txt","content":"hello","n":1.0}`)}, allow},
			{"JCS: 1e0 for 1", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"path":"/w/a.txt","content":"hello","n":1e0}`)}, allow},
			{"JCS: REST body reordered", func(t *testing.T) string { return mint(t, a, approvalOf("write_file", restCanon)) }, restWrite, []edit{withBody(`{"content":"hello","path":"/tmp/out.txt"}`)}, allow},
			{"tampered argument", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"path":"/w/a.txt","content":"hellO","n":1}`)}, deny(403, "args_mismatch")},
			{"tampered number", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"path":"/w/a.txt","content":"hello","n":1.5}`)}, deny(403, "args_mismatch")},
			{"extra argument", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", `{"path":"/w/a.txt","content":"hello","n":1,"mode":"0777"}`)}, deny(403, "args_mismatch")},
			{"arguments left out", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("write_file", "")}, deny(403, "args_mismatch")},
			{"REST tampered body", func(t *testing.T) string { return mint(t, a, approvalOf("write_file", restCanon)) }, restWrite, []edit{withBody(`{"path":"/etc/passwd","content":"hello"}`)}, deny(403, "args_mismatch")},
			{"different tool", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("run_command", writeArgs)}, deny(403, "tool_mismatch")},
			{"different tool and arguments", func(t *testing.T) string { return mint(t, a) }, "", []edit{call("run_command", `{"cmd":"rm -rf /"}`)}, deny(403, "tool_mismatch")},

			// Grant patterns.
			{"grant write_* on write_file", func(t *testing.T) string { return mint(t, a, grantOf(5, "write_*")) }, "", nil, allow},
			{"grant write_* on write_file, other arguments", func(t *testing.T) string { return mint(t, a, grantOf(5, "write_*")) }, "", []edit{call("write_file", `{"path":"/w/b"}`)}, allow},
			{"grant write_* on read_file", func(t *testing.T) string { return mint(t, a, grantOf(5, "write_*")) }, "", []edit{call("read_file", `{"path":"/w/a.txt"}`)}, deny(403, "tool_mismatch")},
			{"grant write_* on list_dir", func(t *testing.T) string { return mint(t, a, grantOf(5, "write_*")) }, restList, nil, deny(403, "tool_mismatch")},
			{"grant exact names on run_command", func(t *testing.T) string { return mint(t, a, grantOf(5, "run_command", "list_dir")) }, "", []edit{call("run_command", `{"cmd":"ls"}`)}, allow},
			{"grant exact names on list_dir", func(t *testing.T) string { return mint(t, a, grantOf(5, "run_command", "list_dir")) }, restList, nil, allow},
			{"grant exact names on write_file", func(t *testing.T) string { return mint(t, a, grantOf(5, "run_command", "list_dir")) }, "", nil, deny(403, "tool_mismatch")},
			{"grant exact name is no prefix", func(t *testing.T) string { return mint(t, a, grantOf(5, "write_file")) }, "", []edit{call("write_file_v2", writeArgs)}, deny(403, "tool_mismatch")},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				fx, edits := tt.fixture, tt.edits
				if fx == "" {
					fx = writeFixture
				}
				if edits == nil && fx == writeFixture {
					edits = write
				}
				req := request(t, fx, append(slices.Clone(edits), withToken(tt.token(t)))...)
				expect(t, tt.name, s.check(t, req), tt.want)
			})
		}

		// The token in Envoy's header_map (encode_raw_headers).
		inMap := func(keys ...string) func(tok string) edit {
			return func(tok string) edit {
				return func(h *authv3.AttributeContext_HttpRequest) {
					for _, k := range keys {
						withHeaderMapEntry(k, tok)(h)
					}
				}
			}
		}
		for _, tt := range []struct {
			name  string
			token func(t *testing.T) string
			send  func(tok string) edit
			want  want
		}{
			{"header_map", func(t *testing.T) string { return mint(t, a, grantOf(1, "list_dir")) }, inMap(tokenHeader), allow},
			{"header_map, name in capitals", func(t *testing.T) string { return mint(t, a, grantOf(1, "list_dir")) }, inMap("X-M1-Approval-Token"), allow},
			{"header_map, header repeated", func(t *testing.T) string { return mint(t, a, grantOf(2, "list_dir")) }, inMap(tokenHeader, tokenHeader), deny(401, "token_invalid")},
			{"header_map, wrong tool", func(t *testing.T) string { return mint(t, a, grantOf(1, "write_file")) }, inMap(tokenHeader), deny(403, "tool_mismatch")},
		} {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				expect(t, tt.name, s.check(t, request(t, headerMapList, tt.send(tt.token(t)))), tt.want)
			})
		}
	})

	t.Run("single use", func(t *testing.T) {
		write := step{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow}
		replayed := step{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_replayed")}
		exhausted := step{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "grant_exhausted")}
		ping := step{"ping", mcpPing, nil, allow}
		tests := []struct {
			name  string
			token func(t *testing.T) string
			steps []step
		}{
			{"replay", func(t *testing.T) string { return mint(t, a) }, []step{write, replayed}},
			{"replay of a REST approval over MCP", func(t *testing.T) string { return mint(t, a, approvalOf("write_file", restCanon)) }, []step{
				{"REST write_file", restWrite, nil, allow},
				{"MCP write_file", writeFixture, []edit{call("write_file", `{"path":"/tmp/out.txt","content":"hello"}`)}, deny(403, "token_replayed")},
			}},
			{"replay with JCS-equivalent body", func(t *testing.T) string { return mint(t, a) }, []step{write,
				{"reordered", writeFixture, []edit{call("write_file", `{"n":1.0,"content":"hello","path":"/w/a.txt"}`)}, deny(403, "token_replayed")},
			}},
			{"binding failure does not consume", func(t *testing.T) string { return mint(t, a) }, []step{
				{"tampered", writeFixture, []edit{call("write_file", `{"path":"/etc/x","content":"hello","n":1}`)}, deny(403, "args_mismatch")},
				{"other tool", writeFixture, []edit{call("run_command", writeArgs)}, deny(403, "tool_mismatch")},
				write, replayed,
			}},
			{"non-tool calls verify but do not consume", func(t *testing.T) string { return mint(t, a) }, []step{
				ping,
				{"tools/list", "mcp-tools-list", nil, allow},
				{"plain HTTP", "http-get-other", nil, denyReason(403, "policy_denied", "not_a_tool_call")},
				write,
				{"ping after use", mcpPing, nil, allow},
				replayed,
			}},
			{"approval of a tool that needs none", func(t *testing.T) string { return mint(t, a, approvalOf("read_file", `{"path":"/w/a.txt"}`)) }, []step{
				{"read_file", writeFixture, []edit{call("read_file", `{"path":"/w/a.txt"}`)}, allow},
				{"read_file again", writeFixture, []edit{call("read_file", `{"path":"/w/a.txt"}`)}, deny(403, "token_replayed")},
			}},
			{"bad token on ping", func(t *testing.T) string { return "not-a-token" }, []step{{"ping", mcpPing, nil, deny(401, "token_invalid")}}},
			{"expired token on ping", func(t *testing.T) string {
				return mint(t, a, withTimes(-2*time.Minute, -2*time.Minute, -10*time.Second))
			}, []step{{"ping", mcpPing, nil, deny(401, "token_expired")}}},
			{"wrong aud on plain HTTP", func(t *testing.T) string { return mint(t, a, withAud("x")) }, []step{{"GET /other", "http-get-other", nil, deny(401, "audience_mismatch")}}},
			{"grant max_uses 2", func(t *testing.T) string { return mint(t, a, grantOf(2, "write_file")) }, []step{
				write,
				{"write_file, other arguments", writeFixture, []edit{call("write_file", `{"path":"/w/b"}`)}, allow},
				exhausted,
				ping,
			}},
			{"grant max_uses 1 used by a REST call", func(t *testing.T) string { return mint(t, a, grantOf(1, "write_*")) }, []step{
				{"REST write_file", restWrite, nil, allow},
				exhausted,
			}},
			// The default policy denies an unknown tool even with a token:
			// a policy deny must leave the grant's use uncounted.
			{"policy deny leaves the grant unused", func(t *testing.T) string { return mint(t, a, grantOf(1, "write_file", "delete_everything")) }, []step{
				{"delete_everything", writeFixture, []edit{call("delete_everything", `{}`)}, denyReason(403, "policy_denied", "unknown_tool")},
				{"delete_everything again", writeFixture, []edit{call("delete_everything", `{}`)}, denyReason(403, "policy_denied", "unknown_tool")},
				write,
				exhausted,
			}},
			{"policy deny leaves the approval unused", func(t *testing.T) string { return mint(t, a, approvalOf("delete_everything", `{}`)) }, []step{
				{"delete_everything", writeFixture, []edit{call("delete_everything", `{}`)}, denyReason(403, "policy_denied", "unknown_tool")},
				{"delete_everything again", writeFixture, []edit{call("delete_everything", `{}`)}, denyReason(403, "policy_denied", "unknown_tool")},
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				s.run(t, tt.name, tt.token(t), tt.steps)
			})
		}
	})

	// Concurrent presentations of one fresh token: the approval is used
	// once and the grant max_uses times, however the Checks interleave.
	t.Run("concurrent presentations", func(t *testing.T) {
		const n = 24
		tests := []struct {
			name   string
			token  string
			allows int
			denied want
		}{
			{"approval", mint(t, a), 1, deny(403, "token_replayed")},
			{"grant max_uses 5", mint(t, a, grantOf(5, "write_file")), 5, deny(403, "grant_exhausted")},
		}
		for _, tt := range tests {
			req := request(t, writeFixture, call("write_file", writeArgs), withToken(tt.token))
			client := authv3.NewAuthorizationClient(s.conn)
			ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
			var (
				wg    sync.WaitGroup
				start = make(chan struct{})
				got   [n]want
				errs  [n]error
			)
			for i := range n {
				wg.Go(func() {
					<-start
					resp, err := client.Check(ctx, req)
					if err != nil {
						errs[i] = err
						return
					}
					got[i], _, errs[i] = outcome(resp, false)
				})
			}
			close(start)
			wg.Wait()
			cancel()
			allows := 0
			for i := range n {
				switch {
				case errs[i] != nil:
					t.Errorf("Check(concurrent %s %d): %v", tt.name, i, errs[i])
				case got[i].allow:
					allows++
				case got[i] != tt.denied:
					t.Errorf("Check(concurrent %s %d) = %v, want allow or %v", tt.name, i, got[i], tt.denied)
				}
			}
			if allows != tt.allows {
				t.Errorf("%d concurrent presentations of one %s: %d allowed, want exactly %d", n, tt.name, allows, tt.allows)
			}
		}
	})

	t.Run("revocation", func(t *testing.T) {
		const api = "/api/m1/revocations"
		for _, tt := range []struct {
			name, token, body string
			want              int
		}{
			{"no bearer", "", `{"jti":"j"}`, 401},
			{"wrong bearer", "not-the-token", `{"jti":"j"}`, 401},
			{"jti and sub", s.Token, `{"jti":"j","sub":"s"}`, 400},
			{"neither jti nor sub", s.Token, `{}`, 400},
			{"only until", s.Token, `{"until":"2099-01-01T00:00:00Z"}`, 400},
			{"empty jti", s.Token, `{"jti":""}`, 400},
			{"until in the past", s.Token, `{"sub":"s","until":"2001-01-01T00:00:00Z"}`, 400},
			{"until not RFC 3339", s.Token, `{"sub":"s","until":"tomorrow"}`, 400},
			{"unknown member", s.Token, `{"kid":"k"}`, 400},
			{"not JSON", s.Token, `jti=j`, 400},
		} {
			if code, body := s.adminDo(t, "POST", api, tt.token, tt.body); code != tt.want {
				t.Errorf("POST %s %s (%s) = %d, want %d; body %s", api, tt.body, tt.name, code, tt.want, body)
			}
		}
		if code, _ := s.adminDo(t, "GET", api, "", ""); code != 401 {
			t.Errorf("GET %s without the bearer = %d, want 401", api, code)
		}
		if code, _ := s.adminDo(t, "DELETE", api+"/sub/agent-rev", "", ""); code != 401 {
			t.Errorf("DELETE %s/sub/agent-rev without the bearer = %d, want 401", api, code)
		}

		// By jti: that token only, on tool and non-tool calls alike,
		// checked after the binding (8 before 9).
		jti := "jti-revoked-1"
		tok := mint(t, a, withJTI(jti), withSub("agent-rj"))
		code, body := s.adminDo(t, "POST", api, s.Token, `{"jti":"`+jti+`"}`)
		if code != 201 {
			t.Fatalf("POST %s jti = %d, want 201; body %s", api, code, body)
		}
		var rev struct {
			JTI   string    `json:"jti"`
			Until time.Time `json:"until"`
		}
		if err := json.Unmarshal(body, &rev); err != nil || rev.JTI != jti {
			t.Errorf("POST %s jti: body %s, want the revocation of %s (%v)", api, body, jti, err)
		} else if least := time.Now().Add(3 * time.Minute); rev.Until.Before(least) {
			// Default lifetime: the maximum TTL (3m) plus twice the skew.
			t.Errorf("POST %s jti: until %v, want at least the maximum token TTL from now (%v)", api, rev.Until, least)
		}
		s.run(t, "revoked jti", tok, []step{
			{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")},
			{"ping", mcpPing, nil, deny(403, "token_revoked")},
			{"tampered", writeFixture, []edit{call("write_file", `{}`)}, deny(403, "args_mismatch")},
		})
		s.run(t, "same sub, other jti", mint(t, a, withSub("agent-rj")), []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow}})

		// A grant verified (and cached) before its revocation.
		cached := mint(t, a, withJTI("jti-revoked-2"), grantOf(5, "write_file"))
		s.run(t, "grant before revocation", cached, []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow}})
		if code, body := s.adminDo(t, "POST", api, s.Token, `{"jti":"jti-revoked-2"}`); code != 201 {
			t.Fatalf("POST %s jti = %d, want 201; body %s", api, code, body)
		}
		s.run(t, "grant after revocation", cached, []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")}})

		// A SPIFFE ID as sub: slashes in the DELETE path, escaped.
		spiffe := "spiffe://cluster.local/ns/agents/sa/agent-9"
		if code, body := s.adminDo(t, "POST", api, s.Token, `{"sub":"`+spiffe+`"}`); code != 201 {
			t.Fatalf("POST %s sub %s = %d, want 201; body %s", api, spiffe, code, body)
		}
		s.run(t, "revoked SPIFFE sub", mint(t, a, withSub(spiffe)), []step{{"ping", mcpPing, nil, deny(403, "token_revoked")}})
		if code, body := s.adminDo(t, "DELETE", api+"/sub/"+url.PathEscape(spiffe), s.Token, ""); code != 204 {
			t.Errorf("DELETE %s/sub/%s = %d, want 204; body %s", api, url.PathEscape(spiffe), code, body)
		}
		s.run(t, "lifted SPIFFE sub", mint(t, a, withSub(spiffe)), []step{{"ping", mcpPing, nil, allow}})

		// By sub: every token of the subject until lifted; a token denied
		// while revoked was not consumed.
		held := mint(t, a, withSub("agent-rev"))
		grant := mint(t, a, withSub("agent-rev"), grantOf(1, "write_file"))
		if code, body := s.adminDo(t, "POST", api, s.Token, `{"sub":"agent-rev"}`); code != 201 {
			t.Fatalf("POST %s sub = %d, want 201; body %s", api, code, body)
		}
		s.run(t, "revoked sub", held, []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")}})
		s.run(t, "revoked sub grant", grant, []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")}})
		until := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		if code, body := s.adminDo(t, "POST", api, s.Token, `{"sub":"agent-tmp","until":"`+until+`"}`); code != 201 {
			t.Errorf("POST %s sub with until = %d, want 201; body %s", api, code, body)
		}
		s.run(t, "revoked sub with until", mint(t, a, withSub("agent-tmp")), []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")}})

		code, body = s.adminDo(t, "GET", api, s.Token, "")
		var list struct {
			Revocations []struct {
				JTI string `json:"jti"`
				Sub string `json:"sub"`
			} `json:"revocations"`
		}
		if err := json.Unmarshal(body, &list); code != 200 || err != nil {
			t.Errorf("GET %s = %d %s, want 200 and a list (%v)", api, code, body, err)
		}
		for _, w := range []string{"jti " + jti, "sub agent-rev", "sub agent-tmp"} {
			found := false
			for _, r := range list.Revocations {
				found = found || w == "jti "+r.JTI || w == "sub "+r.Sub
			}
			if !found {
				t.Errorf("GET %s = %s, want %s in it", api, body, w)
			}
		}

		if code, body := s.adminDo(t, "DELETE", api+"/sub/agent-rev", s.Token, ""); code != 204 {
			t.Errorf("DELETE %s/sub/agent-rev = %d, want 204; body %s", api, code, body)
		}
		if code, _ := s.adminDo(t, "DELETE", api+"/sub/agent-rev", s.Token, ""); code != 404 {
			t.Errorf("DELETE %s/sub/agent-rev twice = %d, want 404", api, code)
		}
		s.run(t, "lifted sub", held, []step{
			{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow},
			{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_replayed")},
		})
		s.run(t, "lifted sub grant", grant, []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow}})
	})

	t.Run("allow headers", func(t *testing.T) {
		tests := []struct {
			name      string
			token     string
			principal string // the token's sub, over the mTLS principal and the client's header
			runID     string // "": the client's x-m1-run-id must be removed, not set
		}{
			{"with run_id", mint(t, a, withSub("agent-7"), withRunID("run-99")), "agent-7", "run-99"},
			{"without run_id", mint(t, a, withSub("agent-8"), withRunID("")), "agent-8", ""},
		}
		for _, tt := range tests {
			req := request(t, writeFixture, call("write_file", writeArgs), withToken(tt.token),
				withHeader("x-m1-principal", "spoofed"), withHeader("x-m1-run-id", "spoofed-run"), withHeader("x-m1-other", "x"))
			resp := s.check(t, req)
			expect(t, tt.name, resp, allow)
			ok := resp.GetOkResponse()
			if ok == nil {
				continue
			}
			set := map[string]string{}
			for _, h := range ok.GetHeaders() {
				set[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
			}
			removed := ok.GetHeadersToRemove()
			if got := set["x-m1-principal"]; got != tt.principal {
				t.Errorf("Check(%s): x-m1-principal = %q, want the token's sub %q", tt.name, got, tt.principal)
			}
			if tt.runID != "" {
				if got := set["x-m1-run-id"]; got != tt.runID {
					t.Errorf("Check(%s): x-m1-run-id = %q, want the token's m1.run_id %q", tt.name, got, tt.runID)
				}
			} else if _, isSet := set["x-m1-run-id"]; isSet || !slices.Contains(removed, "x-m1-run-id") {
				t.Errorf("Check(%s): x-m1-run-id set to %q, headers_to_remove %q; want the client's removed", tt.name, set["x-m1-run-id"], removed)
			}
			for _, h := range []string{tokenHeader, "x-m1-other"} {
				if !slices.Contains(removed, h) {
					t.Errorf("Check(%s): headers_to_remove = %q, want %s in it", tt.name, removed, h)
				}
			}
			for _, h := range removed {
				if _, isSet := set[h]; isSet {
					t.Errorf("Check(%s): %s is both set and removed", tt.name, h)
				}
			}
			if got := resp.GetDynamicMetadata().GetFields()["principal"].GetStringValue(); got != tt.principal {
				t.Errorf("Check(%s): dynamic_metadata principal = %q, want %q", tt.name, got, tt.principal)
			}
		}
	})

	t.Run("health keys", func(t *testing.T) {
		status, detail, kids, doc := s.keysCheck(t)
		if status != "ok" {
			t.Errorf("/health keys = %s (%s), want ok", status, detail)
		}
		if want := []string{"kid-a", "kid-a2", "kid-e", "kid-r"}; !slices.Equal(kids, want) {
			t.Errorf("/health keys kids = %q, want %q", kids, want)
		}
		if got := doc.Checks["keys"].Info["jwks_file"]; got != jwksPath {
			t.Errorf("/health keys jwks_file = %v, want %s", got, jwksPath)
		}
	})

	// Last, alone on the sidecar: the counters move by exactly what is sent.
	t.Run("verification metrics", func(t *testing.T) {
		const series = `m1_token_verifications_total{result="%s"}`
		before := s.metrics(t)
		tok := mint(t, a)
		s.run(t, "metrics", tok, []step{
			{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow},
			{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_replayed")},
			{"tampered", writeFixture, []edit{call("write_file", `{}`)}, deny(403, "args_mismatch")},
			{"ping", mcpPing, nil, allow},
		})
		s.run(t, "metrics", "garbage", []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(401, "token_invalid")}})
		s.run(t, "metrics", mint(t, a, withTimes(-2*time.Minute, -2*time.Minute, -10*time.Second)), []step{{"ping", mcpPing, nil, deny(401, "token_expired")}})
		s.run(t, "metrics", mint(t, a, grantOf(1, "write_file")), []step{
			{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow},
			{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "grant_exhausted")},
			{"run_command", writeFixture, []edit{call("run_command", writeArgs)}, deny(403, "tool_mismatch")},
		})
		if code, body := s.adminDo(t, "POST", "/api/m1/revocations", s.Token, `{"jti":"jti-metrics"}`); code != 201 {
			t.Fatalf("POST /api/m1/revocations = %d, want 201; body %s", code, body)
		}
		s.run(t, "metrics", mint(t, a, withJTI("jti-metrics")), []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_revoked")}})
		s.run(t, "metrics", mint(t, a, withAud("x")), []step{{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, deny(401, "audience_mismatch")}})
		after := s.metrics(t)
		for result, n := range map[string]float64{
			"ok": 3, "token_replayed": 1, "args_mismatch": 1, "token_invalid": 1, "token_expired": 1,
			"grant_exhausted": 1, "tool_mismatch": 1, "token_revoked": 1, "audience_mismatch": 1, "issuer_untrusted": 0,
		} {
			k := fmt.Sprintf(series, result)
			if d := after[k] - before[k]; d != n {
				t.Errorf("%s grew by %v, want %v", k, d, n)
			}
		}
	})
}

// TestApprovalKeyRotation rotates the JWKS file under a running sidecar
// that also has an HS256 secret: keys added and removed take effect without
// a restart (a removed key's token fails even though it verified, and was
// cached, before), a missing or bad file keeps the old keys and degrades
// /health until a good one comes, the secret survives every reload, and
// SIGHUP reloads a change the file watcher cannot see.
func TestApprovalKeyRotation(t *testing.T) {
	t.Parallel()
	a, b, c := genKey(t, "EdDSA", "kid-a"), genKey(t, "ES256", "kid-b"), genKey(t, "EdDSA", "kid-c")
	secret := strings.Repeat("k", 32)
	hk, err := approval.HMACKey([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	s, path := startWithKeys(t, []*approval.SigningKey{a}, "--jwt-secret", secret)
	// Grants, so that one token can be presented again and again.
	ga := mint(t, a, grantOf(100, "write_file"))
	gb := mint(t, b, grantOf(100, "write_file"))
	gc := mint(t, c, grantOf(100, "write_file"))
	gh := mint(t, hk, grantOf(100, "write_file"))
	names := map[string]string{ga: "token from A", gb: "token from B", gc: "token from C", gh: "HS256 token"}
	invalid := deny(401, "token_invalid")

	// Where the file is a symlink to (for SIGHUP), in an unwatched directory.
	elsewhere := filepath.Join(t.TempDir(), "jwks.json")
	writeJWKS := func(data []byte) func(t *testing.T) {
		return func(t *testing.T) { writeAtomic(t, path, data) }
	}
	// Readiness: a token's outcome on a call that never consumes it, or
	// the keys check's status.
	tokenIs := func(tok string, w want) func() (bool, string) {
		return func() (bool, string) {
			got := s.outcomeOf(t, request(t, mcpPing, withToken(tok)))
			return got.allow == w.allow && got.code == w.code, names[tok] + ": " + got.String()
		}
	}
	keysAre := func(status string) func() (bool, string) {
		return func() (bool, string) {
			got, detail, _, _ := s.keysCheck(t)
			return got == status, got + " " + detail
		}
	}
	type result struct {
		token string
		want  want
	}
	tests := []struct {
		name   string
		change func(t *testing.T)
		ready  func() (bool, string) // polled until true after change
		status string                // of the keys check on /health
		kids   []string
		checks []result
	}{
		{"start with A", nil, nil, "ok", []string{"kid-a"},
			[]result{{ga, allow}, {gb, invalid}, {gh, allow}}},
		{"add B", writeJWKS(jwksOf(t, a, b)), tokenIs(gb, allow), "ok", []string{"kid-a", "kid-b"},
			[]result{{ga, allow}, {gb, allow}, {gh, allow}}},
		{"remove A", writeJWKS(jwksOf(t, b)), tokenIs(ga, invalid), "ok", []string{"kid-b"},
			[]result{{ga, invalid}, {gb, allow}, {gh, allow}}},
		{"garbage", writeJWKS([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519"`)), keysAre("degraded"), "degraded", []string{"kid-b"},
			[]result{{ga, invalid}, {gb, allow}, {gh, allow}}},
		{"good file after garbage", writeJWKS(jwksOf(t, b)), keysAre("ok"), "ok", []string{"kid-b"},
			[]result{{ga, invalid}, {gb, allow}, {gh, allow}}},
		{"file deleted", func(t *testing.T) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}, keysAre("degraded"), "degraded", []string{"kid-b"},
			[]result{{ga, invalid}, {gb, allow}, {gh, allow}}},
		// The same content as before the deletion.
		{"file back", writeJWKS(jwksOf(t, b)), keysAre("ok"), "ok", []string{"kid-b"},
			[]result{{ga, invalid}, {gb, allow}, {gh, allow}}},
		{"symlink to a good file", func(t *testing.T) {
			writeAtomic(t, elsewhere, jwksOf(t, b, c))
			link := filepath.Join(filepath.Dir(path), ".link")
			if err := os.Symlink(elsewhere, link); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(link, path); err != nil {
				t.Fatal(err)
			}
		}, tokenIs(gc, allow), "ok", []string{"kid-b", "kid-c"},
			[]result{{ga, invalid}, {gb, allow}, {gc, allow}, {gh, allow}}},
		{"SIGHUP after an unwatched change", func(t *testing.T) {
			writeAtomic(t, elsewhere, jwksOf(t, a, b))
			if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatalf("SIGHUP: %v", err)
			}
		}, tokenIs(ga, allow), "ok", []string{"kid-a", "kid-b"},
			[]result{{ga, allow}, {gb, allow}, {gc, invalid}, {gh, allow}}},
	}
	for _, tt := range tests {
		if tt.change != nil {
			tt.change(t)
			if !poll(t, tt.name, tt.ready) {
				continue
			}
		}
		status, detail, kids, doc := s.keysCheck(t)
		if status != tt.status || !slices.Equal(kids, tt.kids) {
			t.Errorf("%s: /health keys = %s (%s) kids %q, want %s kids %q", tt.name, status, detail, kids, tt.status, tt.kids)
		}
		if status == "degraded" && (detail == "" || doc.Status != "degraded") {
			t.Errorf("%s: /health status %s, keys detail %q; want degraded with the load error", tt.name, doc.Status, detail)
		}
		if hs := doc.Checks["keys"].Info["hs256"]; hs != true {
			t.Errorf("%s: /health keys hs256 = %v, want true", tt.name, hs)
		}
		for _, r := range tt.checks {
			name := tt.name + ": " + names[r.token]
			expect(t, name, s.check(t, request(t, writeFixture, call("write_file", writeArgs), withToken(r.token))), r.want)
		}
	}
	poll(t, "SIGHUP logged", func() (bool, string) {
		return strings.Contains(s.log.String(), `"approval keys reloaded"`), `no "approval keys reloaded" line`
	})
	if !strings.Contains(s.log.String(), "jwks load failed") {
		t.Errorf("no log line for the failed JWKS loads")
	}
}

// TestApprovalHS256 runs a sidecar with M1_JWT_SECRET only and a cacheable
// policy that reads the verified claims and the request host: HS256 tokens
// without a kid verify against the secret and nothing else does, the
// decision cache never lets one token's decision stand for another's, a
// policy deny leaves an approval usable, and the secret's use is logged as
// a warning without the secret itself.
func TestApprovalHS256(t *testing.T) {
	t.Parallel()
	secret := "hs256-secret-of-at-least-thirty-two-bytes"
	dir := writeBundle(t, map[string]string{"authz.rego": `package m1.authz

import rego.v1

default decision := {"allowed": false, "reason": "not_allowed", "http_status": 403}

held if input.m1.request.host == "hold.example"

decision := {"allowed": false, "reason": "on_hold", "http_status": 409} if {
	input.m1.kind == "tool_call"
	held
}

decision := {"allowed": true} if {
	input.m1.kind == "tool_call"
	not held
	input.m1.token.m1.run_id == "run-7"
	input.m1.token.act.sub == "alice"
}

decision := {"allowed": true} if input.m1.kind == "mcp"
`})
	// No leeway: token times are taken exactly.
	s := startSidecar(t, []string{"--policy-dir", dir, "--audience", tokenAud, "--clock-skew", "0s"}, "M1_JWT_SECRET="+secret)
	k, err := approval.HMACKey([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	other, err := approval.HMACKey([]byte(strings.Repeat("z", 32)))
	if err != nil {
		t.Fatal(err)
	}
	ed := genKey(t, "EdDSA", "kid-a")
	write := []edit{call("write_file", writeArgs)}
	onHold := func(h *authv3.AttributeContext_HttpRequest) {
		h.Host = "hold.example"
		h.Headers[":authority"] = h.Host
	}
	tests := []struct {
		name  string
		token func(t *testing.T) string
		edits []edit
		want  want
	}{
		{"HS256 without kid", func(t *testing.T) string { return mint(t, k) }, nil, allow},
		{"HS256 grant", func(t *testing.T) string { return mint(t, k, grantOf(1, "write_*")) }, nil, allow},
		{"HS256 with another secret", func(t *testing.T) string { return mint(t, other) }, nil, deny(401, "token_invalid")},
		{"HS256 with a kid", func(t *testing.T) string {
			return forge(mint(t, k), hdr("HS256", "kid-h", tokenType), hmacSign([]byte(secret)))
		}, nil, deny(401, "token_invalid")},
		{"alg none without kid", func(t *testing.T) string { return forge(mint(t, k), hdr("none", "", tokenType), nil) }, nil, deny(401, "token_invalid")},
		{"EdDSA without kid", func(t *testing.T) string { return forge(mint(t, k), hdr("EdDSA", "", tokenType), edSign(ed)) }, nil, deny(401, "token_invalid")},
		{"EdDSA with kid", func(t *testing.T) string { return mint(t, ed) }, nil, deny(401, "token_invalid")},
		{"HS256 wrong typ", func(t *testing.T) string { return forge(mint(t, k), hdr("HS256", "", "JWT"), hmacSign([]byte(secret))) }, nil, deny(401, "token_invalid")},
		{"HS256 wrong aud", func(t *testing.T) string { return mint(t, k, withAud("x")) }, nil, deny(401, "audience_mismatch")},
		{"expired 3s ago, no leeway", func(t *testing.T) string { return mint(t, k, withTimes(-time.Minute, -time.Minute, -3*time.Second)) }, nil, deny(401, "token_expired")},
		{"nbf in 10s, no leeway", func(t *testing.T) string { return mint(t, k, withTimes(0, 10*time.Second, time.Minute)) }, nil, deny(401, "token_not_yet_valid")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			edits := tt.edits
			if edits == nil {
				edits = write
			}
			req := request(t, writeFixture, append(slices.Clone(edits), withToken(tt.token(t)))...)
			expect(t, tt.name, s.check(t, req), tt.want)
		})
	}
	// Sequential on purpose: each step may be answered from the cache the
	// previous one filled.
	t.Run("decision cache keeps tokens apart", func(t *testing.T) {
		t.Parallel()
		if _, doc := s.health(t); doc.Checks["policy"].Info["decision_cache"] != "on" {
			t.Fatalf("/health policy decision_cache = %v, want on (%s)", doc.Checks["policy"].Info["decision_cache"], doc.Checks["policy"].Detail)
		}
		path := `{"path":"/cache/x"}`
		for _, st := range []struct {
			name  string
			token string
			want  want
		}{
			{"run-7 by alice", mint(t, k, grantOf(9, "write_file")), allow},
			{"run-8 by alice", mint(t, k, grantOf(9, "write_file"), withRunID("run-8")), denyReason(403, "policy_denied", "not_allowed")},
			{"run-7 by bob", mint(t, k, grantOf(9, "write_file"), func(c *approval.Claims) { c.Actor = "bob" }), denyReason(403, "policy_denied", "not_allowed")},
			{"run-7 without act", mint(t, k, grantOf(9, "write_file"), func(c *approval.Claims) { c.Actor = "" }), denyReason(403, "policy_denied", "not_allowed")},
			{"another run-7 by alice", mint(t, k, grantOf(9, "write_file")), allow},
		} {
			expect(t, st.name, s.check(t, request(t, writeFixture, call("write_file", path), withToken(st.token))), st.want)
		}
	})
	// A grant verified once is cached, but checks 3–7 still run on every
	// use: it expires at exp.
	t.Run("cached grant expires", func(t *testing.T) {
		t.Parallel()
		g := mint(t, k, grantOf(1000, "write_file"), withTimes(0, 0, 2*time.Second))
		req := func() *authv3.CheckRequest {
			return request(t, writeFixture, call("write_file", `{"path":"/expiring"}`), withToken(g))
		}
		expect(t, "grant before exp", s.check(t, req()), allow)
		poll(t, "grant past exp: token_expired", func() (bool, string) {
			got := s.outcomeOf(t, req())
			return got.code == "token_expired", got.String()
		})
	})
	// The record of a used approval must outlive the token's acceptance:
	// once exp has passed, a replay is token_expired, never an allow.
	t.Run("used approval past exp", func(t *testing.T) {
		t.Parallel()
		args := `{"path":"/expiring-approval"}`
		tok := mint(t, k, approvalOf("write_file", args), withTimes(0, 0, 2*time.Second))
		req := func() *authv3.CheckRequest {
			return request(t, writeFixture, call("write_file", args), withToken(tok))
		}
		expect(t, "approval before exp", s.check(t, req()), allow)
		var got want
		poll(t, "used approval: no longer token_replayed", func() (bool, string) {
			got = s.outcomeOf(t, req())
			return got.code != "token_replayed", got.String()
		})
		if got.reason = ""; got != deny(401, "token_expired") {
			t.Errorf("Check(used approval past exp) = %v, want deny 401 token_expired", got)
		}
	})
	t.Run("policy deny leaves the approval usable", func(t *testing.T) {
		t.Parallel()
		s.run(t, "held", mint(t, k), []step{
			{"write_file on hold", writeFixture, []edit{call("write_file", writeArgs), onHold}, denyReason(409, "policy_denied", "on_hold")},
			{"write_file", writeFixture, []edit{call("write_file", writeArgs)}, allow},
			{"write_file again", writeFixture, []edit{call("write_file", writeArgs)}, deny(403, "token_replayed")},
		})
	})
	t.Run("health and log", func(t *testing.T) {
		t.Parallel()
		// SIGHUP without a JWKS file reloads nothing and stops nothing.
		if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP: %v", err)
		}
		expect(t, "HS256 after SIGHUP", s.check(t, request(t, writeFixture, call("write_file", writeArgs), withToken(mint(t, k)))), allow)
		code, doc := s.health(t)
		if c := doc.Checks["keys"]; code != 200 || c.Status != "ok" || c.Info["hs256"] != true {
			t.Errorf("/health = %d, keys %+v; want 200, ok with hs256 true", code, c)
		}
		warned := false
		for line := range strings.SplitSeq(s.log.String(), "\n") {
			var rec struct{ Level, Msg string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == "warn" && strings.Contains(rec.Msg, "HS256") {
				warned = true
			}
		}
		if !warned {
			t.Errorf("no warning about the HS256 secret in the log")
		}
		if strings.Contains(s.log.String(), secret) {
			t.Errorf("the log contains M1_JWT_SECRET")
		}
	})
}

// TestApprovalStartupFailures checks that bad key settings stop m1-authz
// with a non-zero exit and a message naming the setting, never the secret.
func TestApprovalStartupFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k := genKey(t, "EdDSA", "kid-a")
	good := filepath.Join(dir, "good.json")
	garbage := filepath.Join(dir, "garbage.json")
	private := filepath.Join(dir, "private.json")
	priv, err := k.MarshalPrivateJWK()
	if err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string][]byte{
		good:    jwksOf(t, k),
		garbage: []byte(`{"keys":`),
		private: []byte(`{"keys":[` + string(priv) + `]}`),
	} {
		writeAtomic(t, p, data)
	}
	short := "only-thirty-one-bytes-long-xxxx"
	if len(short) != 31 {
		t.Fatalf("short secret is %d bytes", len(short))
	}
	tests := []struct {
		name string
		args []string
		env  []string
		want string // in the output
	}{
		{"JWKS without audience", []string{"--jwks-file", good}, nil, "M1_AUDIENCE"},
		{"secret without audience", nil, []string{"M1_JWT_SECRET=" + strings.Repeat("s", 32)}, "M1_AUDIENCE"},
		{"empty audience", []string{"--jwks-file", good}, []string{"M1_AUDIENCE="}, "M1_AUDIENCE"},
		{"short secret in env", []string{"--audience", tokenAud}, []string{"M1_JWT_SECRET=" + short}, "32 bytes"},
		{"short secret flag", []string{"--audience", tokenAud, "--jwt-secret", short}, nil, "32 bytes"},
		{"missing JWKS file", []string{"--audience", tokenAud, "--jwks-file", filepath.Join(dir, "nope.json")}, nil, "nope.json"},
		{"garbage JWKS file", []string{"--audience", tokenAud, "--jwks-file", garbage}, nil, "M1_JWKS_FILE"},
		{"private key in JWKS", []string{"--audience", tokenAud, "--jwks-file", private}, nil, "private"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out := runToExit(t, tt.args, tt.env...)
			if code == 0 {
				t.Errorf("m1-authz (%s) exit status 0, want non-zero", tt.name)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("m1-authz (%s) output does not mention %q:\n%s", tt.name, tt.want, out)
			}
			if strings.Contains(out, short) {
				t.Errorf("m1-authz (%s) output contains the secret", tt.name)
			}
		})
	}
}
