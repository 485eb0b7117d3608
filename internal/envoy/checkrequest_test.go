package envoy

import (
	"regexp"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// sharedExample is /work/shared/examples/checkrequest-mcp-tools-call.json:
// the CheckRequest Envoy sends for an MCP tools/call.
const sharedExample = `{
  "attributes": {
    "source": {"address": {"socketAddress": {"address": "10.0.0.5", "portValue": 53122}}},
    "destination": {"address": {"socketAddress": {"address": "10.0.0.9", "portValue": 8080}}},
    "request": {
      "time": "2026-01-01T12:00:00.123456Z",
      "http": {
        "id": "9823749823749823",
        "method": "POST",
        "headers": {
          ":authority": "tools.local",
          ":method": "POST",
          ":path": "/mcp?session=abc",
          ":scheme": "http",
          "content-type": "application/json",
          "content-length": "110",
          "x-m1-approval-token": "<a JWT>",
          "x-request-id": "7bca2f0e-1c55-4d6a-9b1e-3f2d8c1a9e77",
          "x-forwarded-proto": "http",
          "x-envoy-auth-partial-body": "false"
        },
        "path": "/mcp?session=abc",
        "host": "tools.local",
        "scheme": "http",
        "protocol": "HTTP/1.1",
        "size": "110",
        "body": "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"read_file\",\"arguments\":{\"path\":\"/etc/hosts\"}}}"
      }
    },
    "contextExtensions": {"agent": "agent-42"}
  }
}`

const toolsCallBody = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/etc/hosts"}}}`

// TestBuildCheckRequestMatchesSharedExample builds the shared example's
// request from its parts (Host as a header, content-length,
// x-forwarded-proto and the partial-body header left to BuildCheckRequest)
// and wants exactly the example back.
func TestBuildCheckRequestMatchesSharedExample(t *testing.T) {
	want := &authv3.CheckRequest{}
	if err := protojson.Unmarshal([]byte(sharedExample), want); err != nil {
		t.Fatalf("parse shared example: %v", err)
	}
	got, err := BuildCheckRequest(Request{
		Method: "POST",
		Path:   "/mcp?session=abc",
		Headers: [][2]string{
			{"Host", "tools.local"},
			{"Content-Type", "application/json"},
			{"X-M1-Approval-Token", "<a JWT>"},
			{"X-Request-Id", "7bca2f0e-1c55-4d6a-9b1e-3f2d8c1a9e77"},
		},
		Body:              []byte(toolsCallBody),
		SourceAddr:        "10.0.0.5:53122",
		DestAddr:          "10.0.0.9:8080",
		ContextExtensions: map[string]string{"agent": "agent-42"},
		Now:               time.Date(2026, 1, 1, 12, 0, 0, 123456000, time.UTC),
	})
	if err != nil {
		t.Fatalf("BuildCheckRequest: %v", err)
	}
	if !regexp.MustCompile(`^[0-9]+$`).MatchString(got.GetAttributes().GetRequest().GetHttp().GetId()) {
		t.Errorf("id = %q, want a decimal stream id", got.GetAttributes().GetRequest().GetHttp().GetId())
	}
	got.Attributes.Request.Http.Id = want.Attributes.Request.Http.Id
	if !proto.Equal(got, want) {
		t.Errorf("BuildCheckRequest(shared example parts) =\n%s\nwant\n%s", protojson.Format(got), protojson.Format(want))
	}
}

func TestBuildCheckRequest(t *testing.T) {
	base := func() Request {
		return Request{Method: "POST", Path: "/mcp", Host: "tools.local", Body: []byte(`{}`)}
	}
	tests := []struct {
		name  string
		req   func() Request
		check func(t *testing.T, h *authv3.AttributeContext_HttpRequest, attrs *authv3.AttributeContext)
	}{
		{
			name: "defaults",
			req:  base,
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, attrs *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{
					":authority": "tools.local", ":method": "POST", ":path": "/mcp", ":scheme": "http",
					"content-length": "2", "x-envoy-auth-partial-body": "false", "x-forwarded-proto": "http",
				})
				if h.GetScheme() != "http" || h.GetProtocol() != "HTTP/1.1" || h.GetSize() != 2 || h.GetBody() != "{}" {
					t.Errorf("scheme, protocol, size, body = %q, %q, %d, %q, want http, HTTP/1.1, 2, {}", h.GetScheme(), h.GetProtocol(), h.GetSize(), h.GetBody())
				}
				if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(h.GetHeaders()["x-request-id"]) {
					t.Errorf("x-request-id = %q, want a random UUID", h.GetHeaders()["x-request-id"])
				}
				if d := time.Since(attrs.GetRequest().GetTime().AsTime()); d < 0 || d > time.Minute {
					t.Errorf("time = %v, want now", attrs.GetRequest().GetTime().AsTime())
				}
				if attrs.Source != nil || attrs.Destination != nil || attrs.ContextExtensions != nil {
					t.Errorf("source, destination, context extensions = %v, %v, %v, want none", attrs.Source, attrs.Destination, attrs.ContextExtensions)
				}
			},
		},
		{
			name: "repeated headers joined in order",
			req: func() Request {
				r := base()
				r.Headers = [][2]string{{"Accept", "application/json"}, {"X-Trace", "1"}, {"accept", " text/event-stream "}}
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{"accept": "application/json,text/event-stream", "x-trace": "1"})
			},
		},
		{
			name: "no body",
			req: func() Request {
				r := base()
				r.Method, r.Body = "GET", nil
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if h.GetSize() != -1 || h.GetBody() != "" || h.GetRawBody() != nil {
					t.Errorf("size, body, raw_body = %d, %q, %q, want -1 and none", h.GetSize(), h.GetBody(), h.GetRawBody())
				}
				for _, k := range []string{"content-length", HeaderPartialBody} {
					if v, ok := h.GetHeaders()[k]; ok {
						t.Errorf("header %s = %q, want absent without a body", k, v)
					}
				}
			},
		},
		{
			name: "client partial-body header dropped",
			req: func() Request {
				r := base()
				r.Headers = [][2]string{{"X-Envoy-Auth-Partial-Body", "true"}}
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{HeaderPartialBody: "false"})
			},
		},
		{
			name: "client headers kept",
			req: func() Request {
				r := base()
				r.RequestID = "ignored"
				r.Headers = [][2]string{{"Content-Length", "99"}, {"X-Request-Id", "rid-1"}, {"X-Forwarded-Proto", "https"}}
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{"content-length": "99", "x-request-id": "rid-1", "x-forwarded-proto": "https"})
			},
		},
		{
			name: "request id field",
			req: func() Request {
				r := base()
				r.RequestID = "rid-2"
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{"x-request-id": "rid-2"})
			},
		},
		{
			name: "raw body keeps bytes",
			req: func() Request {
				r := base()
				r.Body, r.PackAsBytes = []byte("a\xffb"), true
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if string(h.GetRawBody()) != "a\xffb" || h.GetBody() != "" || h.GetSize() != 3 {
					t.Errorf("raw_body, body, size = %q, %q, %d, want a\\xffb, none, 3", h.GetRawBody(), h.GetBody(), h.GetSize())
				}
			},
		},
		{
			name: "string body coerced to UTF-8",
			req: func() Request {
				r := base()
				r.Body = []byte("a\xff\xfeé")
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, _ *authv3.AttributeContext) {
				if h.GetBody() != "a!!é" || h.GetSize() != 5 {
					t.Errorf("body, size = %q, %d, want a!!é, 5", h.GetBody(), h.GetSize())
				}
			},
		},
		{
			name: "https, HTTP/2, principal, addresses",
			req: func() Request {
				r := base()
				r.Scheme, r.Protocol = "https", "HTTP/2"
				r.SourcePrincipal = "spiffe://cluster.local/ns/agents/sa/agent-42"
				r.SourceAddr, r.DestAddr = "[::1]:40000", "127.0.0.1:8080"
				return r
			},
			check: func(t *testing.T, h *authv3.AttributeContext_HttpRequest, attrs *authv3.AttributeContext) {
				wantHeaders(t, h, map[string]string{":scheme": "https", "x-forwarded-proto": "https"})
				if h.GetProtocol() != "HTTP/2" {
					t.Errorf("protocol = %q, want HTTP/2", h.GetProtocol())
				}
				src := attrs.GetSource()
				if src.GetPrincipal() != "spiffe://cluster.local/ns/agents/sa/agent-42" ||
					src.GetAddress().GetSocketAddress().GetAddress() != "::1" ||
					src.GetAddress().GetSocketAddress().GetPortValue() != 40000 {
					t.Errorf("source = %v, want the principal at [::1]:40000", src)
				}
				if a := attrs.GetDestination().GetAddress().GetSocketAddress(); a.GetAddress() != "127.0.0.1" || a.GetPortValue() != 8080 {
					t.Errorf("destination = %v, want 127.0.0.1:8080", a)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BuildCheckRequest(tt.req())
			if err != nil {
				t.Fatalf("BuildCheckRequest(%s): %v", tt.name, err)
			}
			tt.check(t, got.GetAttributes().GetRequest().GetHttp(), got.GetAttributes())
		})
	}
}

func wantHeaders(t *testing.T, h *authv3.AttributeContext_HttpRequest, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got, ok := h.GetHeaders()[k]; !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
}

func TestBuildCheckRequestErrors(t *testing.T) {
	tests := []struct {
		name    string
		req     Request
		wantErr string
	}{
		{"no method", Request{Path: "/mcp", Host: "h"}, "method"},
		{"method not a token", Request{Method: "PO ST", Path: "/mcp", Host: "h"}, "method"},
		{"no path", Request{Method: "GET", Host: "h"}, "path"},
		{"path with space", Request{Method: "GET", Path: "/a b", Host: "h"}, "path"},
		{"no host", Request{Method: "GET", Path: "/"}, "no host"},
		{"pseudo-header", Request{Method: "GET", Path: "/", Host: "h", Headers: [][2]string{{":path", "/x"}}}, "pseudo-header"},
		{"bad header name", Request{Method: "GET", Path: "/", Host: "h", Headers: [][2]string{{"x y", "1"}}}, "not an HTTP token"},
		{"header value with CRLF", Request{Method: "GET", Path: "/", Host: "h", Headers: [][2]string{{"x", "a\r\nb: c"}}}, "CR, LF or NUL"},
		{"conflicting Host header", Request{Method: "GET", Path: "/", Host: "h", Headers: [][2]string{{"Host", "other"}}}, "differs"},
		{"bad source address", Request{Method: "GET", Path: "/", Host: "h", SourceAddr: "10.0.0.1"}, "source address"},
		{"bad destination port", Request{Method: "GET", Path: "/", Host: "h", DestAddr: "10.0.0.1:http"}, "destination address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := BuildCheckRequest(tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("BuildCheckRequest(%s) error = %v, want one containing %q", tt.name, err, tt.wantErr)
			}
		})
	}
}

// TestProtoJSONRoundTrip checks that what BuildCheckRequest makes survives
// protojson, the fixture format, both ways, with size as a JSON string and
// raw_body in base64.
func TestProtoJSONRoundTrip(t *testing.T) {
	for _, pack := range []bool{false, true} {
		req, err := BuildCheckRequest(Request{
			Method: "POST", Path: "/tools/write_file?x=1", Host: "tools.local",
			Headers:           [][2]string{{"Content-Type", "application/json"}},
			Body:              []byte(`{"path":"/tmp/a","content":"hi"}`),
			PackAsBytes:       pack,
			SourcePrincipal:   "agent-42",
			SourceAddr:        "10.0.0.5:53122",
			DestAddr:          "10.0.0.9:8080",
			ContextExtensions: map[string]string{"agent": "agent-42"},
		})
		if err != nil {
			t.Fatalf("BuildCheckRequest(pack_as_bytes=%v): %v", pack, err)
		}
		b, err := protojson.Marshal(req)
		if err != nil {
			t.Fatalf("protojson.Marshal(pack_as_bytes=%v): %v", pack, err)
		}
		want := `"size":"32"`
		if pack {
			want = `"rawBody":"eyJwYXRoIjoiL3RtcC9hIiwiY29udGVudCI6ImhpIn0="`
		}
		if !strings.Contains(strings.ReplaceAll(string(b), " ", ""), want) {
			t.Errorf("protojson(pack_as_bytes=%v) = %s, want it to contain %s", pack, b, want)
		}
		back := &authv3.CheckRequest{}
		if err := protojson.Unmarshal(b, back); err != nil {
			t.Fatalf("protojson.Unmarshal(pack_as_bytes=%v): %v", pack, err)
		}
		if !proto.Equal(back, req) {
			t.Errorf("round trip(pack_as_bytes=%v) = %v, want %v", pack, back, req)
		}
	}
}

func TestBuildCheckRequestDoesNotAliasInput(t *testing.T) {
	body := []byte(`{"a":1}`)
	ext := map[string]string{"k": "v"}
	req, err := BuildCheckRequest(Request{Method: "POST", Path: "/mcp", Host: "h", Body: body, PackAsBytes: true, ContextExtensions: ext})
	if err != nil {
		t.Fatal(err)
	}
	body[0], ext["k"] = 'X', "changed"
	if got := string(req.GetAttributes().GetRequest().GetHttp().GetRawBody()); got != `{"a":1}` {
		t.Errorf("raw_body after caller's change = %q, want the original", got)
	}
	if got := req.GetAttributes().GetContextExtensions()["k"]; got != "v" {
		t.Errorf("context extension after caller's change = %q, want v", got)
	}
}
