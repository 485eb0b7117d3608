package orchestrator

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"net/url"
	"slices"
	"strings"

	"github.com/m1-agent/m1/toolcall"
)

// Dispatch protocols of a registry entry.
const (
	ProtocolMCP  = "mcp"  // JSON-RPC tools/call at the endpoint's MCP path
	ProtocolREST = "rest" // POST <tools path prefix><name> with the arguments as the body
)

// ToolSpec is one tool of the registry: the policy bundle's data.m1.tools
// entry (risk, requires_approval, sensitive, description), plus what the
// orchestrator needs to call it.
type ToolSpec struct {
	Name             string          `json:"-"`
	Risk             string          `json:"risk"`
	RequiresApproval *bool           `json:"requires_approval,omitempty"`
	Sensitive        bool            `json:"sensitive"`
	Description      string          `json:"description"`
	InputSchema      json.RawMessage `json:"input_schema,omitempty"`
	// Endpoint is the base URL of the tool service (its Envoy listener);
	// empty takes the orchestrator's default endpoint.
	Endpoint string `json:"endpoint,omitempty"`
	// Protocol is "mcp" (default) or "rest".
	Protocol string `json:"protocol,omitempty"`
}

// Registry is the set of tools agents may propose, by name.
type Registry map[string]ToolSpec

// RegistryPath is where the registry lives in a policy bundle: the data
// document data.m1.tools, so that the policy and the orchestrator share one
// registry.
const RegistryPath = "m1/tools/data.json"

// LoadRegistry reads the registry from a policy bundle (RegistryPath in
// fsys), filling each entry's endpoint and protocol from the defaults when
// it names none.
func LoadRegistry(fsys fs.FS, defaultEndpoint string) (Registry, error) {
	data, err := fs.ReadFile(fsys, RegistryPath)
	if err != nil {
		return nil, fmt.Errorf("read tool registry: %w", err)
	}
	return ParseRegistry(data, defaultEndpoint)
}

// ParseRegistry parses a registry document ({"<name>": {…}, …}).
func ParseRegistry(data []byte, defaultEndpoint string) (Registry, error) {
	var raw map[string]ToolSpec
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("tool registry: %w", err)
	}
	reg := make(Registry, len(raw))
	for name, t := range raw {
		t.Name = name
		if !toolcall.ValidName(name) {
			return nil, fmt.Errorf("tool registry: tool %q: want 1 to 128 of [A-Za-z0-9_.-]", name)
		}
		if t.Endpoint == "" {
			t.Endpoint = defaultEndpoint
		}
		if u, err := url.Parse(t.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("tool registry: tool %q: endpoint %q is not an http(s) URL", name, t.Endpoint)
		}
		t.Endpoint = strings.TrimRight(t.Endpoint, "/")
		switch t.Protocol {
		case "":
			t.Protocol = ProtocolMCP
		case ProtocolMCP, ProtocolREST:
		default:
			return nil, fmt.Errorf("tool registry: tool %q: protocol %q: want mcp or rest", name, t.Protocol)
		}
		if len(t.InputSchema) > 0 {
			var obj map[string]any
			if err := json.Unmarshal(t.InputSchema, &obj); err != nil {
				return nil, fmt.Errorf("tool registry: tool %q: input_schema is not a JSON object", name)
			}
		}
		reg[name] = t
	}
	return reg, nil
}

// Tools returns the registry as planner tools, in name order.
func (r Registry) Tools() []Tool {
	names := make([]string, 0, len(r))
	for n := range r {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]Tool, 0, len(names))
	for _, n := range names {
		t := r[n]
		out = append(out, Tool{Name: n, Description: t.Description, Risk: t.Risk, InputSchema: t.InputSchema})
	}
	return out
}
