package authz_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/policies"
	"github.com/m1-agent/m1/toolcall"
)

// A Service with the default policy, in-memory state and an in-process
// decision cache, and no approval keys: read_file is allowed without a
// token, write_file needs an approval and is denied.
func ExampleNew() {
	ctx := context.Background()
	bundle, err := policy.LoadFS(policies.FS())
	if err != nil {
		log.Fatal(err)
	}
	engine, err := policy.Prepare(ctx, bundle, policy.Options{Path: "m1/authz/decision", Timeout: time.Second})
	if err != nil {
		log.Fatal(err)
	}
	m, err := authz.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		log.Fatal(err)
	}
	decisions, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: 1000, TTL: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
	mem := state.NewMemory(state.MemoryOptions{})
	svc, err := authz.New(authz.Options{
		Parse:          toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20},
		ApprovalHeader: "x-m1-approval-token",
		Cache:          decisions,
		Uses:           mem,
		Revocations:    mem,
		Logger:         zap.NewNop(),
		Metrics:        m,
		Now:            time.Now,
	}, engine)
	if err != nil {
		log.Fatal(err)
	}

	for _, tool := range []string{"read_file", "write_file"} {
		// A CheckRequest as Envoy sends it for an MCP tools/call, the body
		// included (with_request_body).
		req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: "spiffe://cluster.local/ns/agents/sa/agent-42"},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method:  "POST",
				Path:    "/mcp",
				Host:    "tools.local",
				Headers: map[string]string{":method": "POST", ":path": "/mcp", "content-type": "application/json"},
				Body:    `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"path":"/tmp/notes.txt"}}}`,
			}},
		}}
		resp, _ := svc.Check(ctx, req) // the error is always nil
		if code.Code(resp.GetStatus().GetCode()) == code.Code_OK {
			fmt.Printf("%s: allow, principal %s\n", tool, principal(resp))
			continue
		}
		denied := resp.GetDeniedResponse()
		var body struct{ Error, Reason string }
		_ = json.Unmarshal([]byte(denied.GetBody()), &body)
		fmt.Printf("%s: deny %d %s (%s)\n", tool, denied.GetStatus().GetCode(), body.Error, body.Reason)
	}

	// Output:
	// read_file: allow, principal spiffe://cluster.local/ns/agents/sa/agent-42
	// write_file: deny 401 policy_denied (token_missing)
}

// principal is the x-m1-principal header an allow sets for the tool.
func principal(resp *authv3.CheckResponse) string {
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == authz.HeaderPrincipal {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}
