package bench

import (
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// toolCallBody is an MCP tools/call of read_file, which the default policy
// allows without an approval token.
const toolCallBody = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/etc/hosts"}}}`

// Request returns the CheckRequest every target is asked: the one Envoy sends
// for an MCP tools/call of read_file with {"path":"/etc/hosts"} (the shape of
// the example checkrequest-mcp-tools-call.json, without its
// x-m1-approval-token header). The default policy allows it without a token,
// and its decision is cacheable, so after the first check m1-authz answers it
// from the decision cache. Each call returns a new message.
func Request() *authv3.CheckRequest {
	return callRequest(toolCallBody, "")
}

// callRequest is Request's shape with another MCP body and, when token is
// not empty, the approval token header.
func callRequest(body, token string) *authv3.CheckRequest {
	size := strconv.Itoa(len(body))
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address:       ip,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	req := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: addr("10.0.0.5", 53122)},
		Destination: &authv3.AttributeContext_Peer{Address: addr("10.0.0.9", 8080)},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.New(time.Date(2026, 1, 1, 12, 0, 0, 123456000, time.UTC)),
			Http: &authv3.AttributeContext_HttpRequest{
				Id:     "9823749823749823",
				Method: "POST",
				Headers: map[string]string{
					":authority":                "tools.local",
					":method":                   "POST",
					":path":                     "/mcp?session=abc",
					":scheme":                   "http",
					"content-type":              "application/json",
					"content-length":            size,
					"x-request-id":              "7bca2f0e-1c55-4d6a-9b1e-3f2d8c1a9e77",
					"x-forwarded-proto":         "http",
					"x-envoy-auth-partial-body": "false",
				},
				Path:     "/mcp?session=abc",
				Host:     "tools.local",
				Scheme:   "http",
				Protocol: "HTTP/1.1",
				Size:     int64(len(body)),
				Body:     body,
			},
		},
		ContextExtensions: map[string]string{"agent": "agent-42"},
	}}
	if token != "" {
		req.Attributes.Request.Http.Headers[approvalHeader] = token
	}
	return req
}

// approvalHeader is the sidecar's default M1_APPROVAL_HEADER.
const approvalHeader = "x-m1-approval-token"

// marshalRequest is the wire form of Request, as ghz sends it.
func marshalRequest() ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(Request())
}

// marshalTokenRequest is the wire form of an MCP call with body and token.
func marshalTokenRequest(body, token string) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(callRequest(body, token))
}
