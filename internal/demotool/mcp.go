package demotool

import (
	"context"
	"encoding/json"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// toolDef describes one tool to MCP clients (tools/list).
type toolDef struct {
	name, description string
	schema            map[string]any
}

func objectSchema(required []string, props map[string]string) map[string]any {
	p := map[string]any{}
	for name, desc := range props {
		p[name] = map[string]any{"type": "string", "description": desc}
	}
	s := map[string]any{"type": "object", "properties": p, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	return s
}

// toolDefs are the tools of the default registry, with its descriptions.
var toolDefs = []toolDef{
	{ReadFile, "Read a file from the tool's workspace.",
		objectSchema([]string{"path"}, map[string]string{"path": "file path, relative to the workspace"})},
	{ListDir, "List a directory of the tool's workspace.",
		objectSchema(nil, map[string]string{"path": "directory path, relative to the workspace (default: the workspace)"})},
	{WriteFile, "Create or overwrite a file in the tool's workspace.",
		objectSchema([]string{"path", "content"}, map[string]string{
			"path":    "file path, relative to the workspace",
			"content": "the file's new content",
		})},
	{RunCommand, "Run a shell command in the tool's container (disabled in the demo tool).",
		objectSchema([]string{"command"}, map[string]string{"command": "the command line"})},
}

// newMCPServer returns the MCP server offering the tools. The handlers
// decode and check the arguments themselves, exactly as the REST path does.
func (s *Server) newMCPServer() *mcp.Server {
	m := mcp.NewServer(&mcp.Implementation{Name: "m1-demotool", Version: "1"}, nil)
	for _, t := range toolDefs {
		m.AddTool(&mcp.Tool{Name: t.name, Description: t.description, InputSchema: t.schema}, s.mcpHandler(t.name))
	}
	return m
}

// mcpHandler answers a tools/call of tool: the structured result (also as
// JSON text content), or a tool error (isError) with the message.
func (s *Server) mcpHandler(tool string) mcp.ToolHandler {
	return func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		res, err := s.call(tool, req.Params.Arguments)
		if err != nil {
			r := &mcp.CallToolResult{}
			r.SetError(err)
			return r, nil
		}
		b, err := json.Marshal(res)
		if err != nil {
			r := &mcp.CallToolResult{}
			r.SetError(err)
			return r, nil
		}
		return &mcp.CallToolResult{
			Content:           []mcp.Content{&mcp.TextContent{Text: string(b)}},
			StructuredContent: res,
		}, nil
	}
}
