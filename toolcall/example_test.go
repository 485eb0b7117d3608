package toolcall_test

import (
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/m1-agent/m1/toolcall"
)

// The same call of read_file, once as an MCP tools/call and once as a REST
// POST with the arguments spelled differently, has one arguments hash; a
// body with a number no double holds exactly is refused.
func ExampleParse() {
	opts := toolcall.Options{MCPPath: "/mcp", ToolsPathPrefix: "/tools/", MaxBodyBytes: 1 << 20}
	parse := func(path, body string) {
		// attributes.request.http of the CheckRequest, as Envoy sends it.
		h := &authv3.AttributeContext_HttpRequest{
			Method:  "POST",
			Path:    path,
			Host:    "tools.local",
			Headers: map[string]string{"content-type": "application/json"},
			Body:    body,
		}
		call, err := toolcall.Parse(h, toolcall.HeadersOf(h), opts)
		if err != nil {
			fmt.Printf("%s: refused %s (%d)\n", path, err.Code, err.Status())
			return
		}
		fmt.Printf("%s: %s %s args_sha256=%s\n", path, call.Kind, call.Tool, call.ArgsSHA256)
	}

	parse("/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call",`+
		`"params":{"name":"read_file","arguments":{"path":"/etc/hosts","limit":10}}}`)
	parse("/tools/read_file", `{ "limit": 1e1, "path": "/etc/hosts" }`)
	parse("/tools/read_file", `{"path":"/etc/hosts","limit":9007199254740993}`)

	// Output:
	// /mcp: tool_call read_file args_sha256=25c27120bf81a144177e02ea16b73541a5ccda7e62bea4d1bc8bf51f7b3266fa
	// /tools/read_file: tool_call read_file args_sha256=25c27120bf81a144177e02ea16b73541a5ccda7e62bea4d1bc8bf51f7b3266fa
	// /tools/read_file: refused number_not_canonical (400)
}

// ArgsSHA256 is the hash an approval binds, sha256 of the RFC 8785 form
// {"limit":10,"path":"/etc/hosts"}; it refuses what Parse refuses.
func ExampleArgsSHA256() {
	sum, err := toolcall.ArgsSHA256("read_file", []byte(`{"path":"/etc/hosts","limit":10}`))
	fmt.Println(sum, err)
	_, err = toolcall.ArgsSHA256("read_file", []byte(`{"path":"a","PATH":"b"}`))
	fmt.Println(err)

	// Output:
	// 25c27120bf81a144177e02ea16b73541a5ccda7e62bea4d1bc8bf51f7b3266fa <nil>
	// bad_request: an object has two member names that differ only in case
}
