// Package demotool is a small, real tool server for M1's tests and demo: the
// four tools of the default registry (policies/m1/tools/data.json) served
// over MCP Streamable HTTP with the official MCP Go SDK, and over plain REST,
// so that both dispatch protocols M1 understands (DESIGN §3) reach a tool
// that actually runs.
//
// # Tools
//
//   - read_file {path}: the file's content (at most the MaxFileBytes
//     option, 1 MiB by default) as a UTF-8 string.
//   - list_dir {path}: the directory's entries; path may be omitted, "" or
//     "." for the workspace itself.
//   - write_file {path, content}: creates or overwrites the file, creating
//     missing parent directories.
//   - run_command {command}: never runs anything; always the tool error
//     "run_command is disabled in the demo tool".
//
// Every path is relative to the workspace directory given to [New] and
// confined to it with [os.Root]: absolute paths, ".." escapes and symbolic
// links leading out of the directory are refused. Unknown argument members
// are refused too.
//
// # MCP: POST /mcp
//
// The MCP endpoint is stateless and answers with JSON: no session, no
// Mcp-Session-Id header, initialize optional (a tools/call may come first),
// GET and DELETE answer 405. The exact exchange a raw HTTP client needs:
//
//	POST /mcp HTTP/1.1
//	Content-Type: application/json
//	Accept: application/json, text/event-stream
//	MCP-Protocol-Version: 2025-06-18
//
//	{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"notes.txt"}}}
//
//	HTTP/1.1 200 OK
//	Content-Type: application/json
//
//	{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"{\"path\":\"notes.txt\",…}"}],"structuredContent":{"path":"notes.txt","content":"…","size":5}}}
//
// Both media types must be listed in Accept (the SDK answers 400
// otherwise), Content-Type must be application/json (415 otherwise).
// MCP-Protocol-Version may be left out (2025-03-26 is then assumed) or be any
// version up to 2025-11-25; the 2026-07-28 protocol additionally requires
// Mcp-Method and Mcp-Name headers matching the body (the SDK client sends
// them). An initialize request, when sent, is answered as usual and changes
// nothing for later requests. A notification (no id) is answered 202 with no
// body. A tool error is a normal result with "isError": true and the message
// as text content; an unknown tool or malformed params is a JSON-RPC error.
//
// # REST: POST /tools/{name}
//
// The body is the arguments object (empty means {}); a success is 200 with
// the structured result as JSON (the structuredContent of the MCP answer).
// A failure is {"error": code, "message": text, "tool": name} with status
// 400 bad_arguments, 403 path_refused or disabled, 404 not_found or
// unknown_tool, 413 too_large, or 500 tool_failed.
//
// # Health: GET /health
//
// 200 with {"status":"ok"} while the server runs: a container health check
// (m1 health --url http://127.0.0.1:3000/health in deploy/compose).
//
// # Counting
//
// [Server.Calls] counts, per tool, the calls that reached the tool's code by
// either protocol, whether they succeeded or not: tests use it to assert
// that a call ran exactly once, or never.
package demotool

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"
)

// Tool names, as in the default registry.
const (
	ReadFile   = "read_file"
	ListDir    = "list_dir"
	WriteFile  = "write_file"
	RunCommand = "run_command"
)

// Paths the server serves.
const (
	MCPPath         = "/mcp"
	ToolsPathPrefix = "/tools/"
	HealthPath      = "/health"
)

// DefaultMaxFileBytes is the largest file read_file returns and write_file
// accepts, unless [WithMaxFileBytes] says otherwise.
const DefaultMaxFileBytes = 1 << 20

// Server serves the demo tools over MCP and REST. It is an [http.Handler];
// its methods are safe for concurrent use.
type Server struct {
	root         *os.Root
	maxFileBytes int64
	logger       *zap.Logger
	mux          *http.ServeMux

	mu    sync.Mutex
	calls map[string]int
}

var _ http.Handler = (*Server)(nil)

// Option configures a [Server].
type Option func(*Server)

// WithLogger logs each call at debug level to l (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.logger = l
		}
	}
}

// WithMaxFileBytes bounds the files read_file returns and write_file accepts
// (default [DefaultMaxFileBytes]); n must be positive.
func WithMaxFileBytes(n int64) Option {
	return func(s *Server) { s.maxFileBytes = n }
}

// New returns a server whose tools work inside dir, which must be an
// existing directory. It holds dir open until [Server.Close].
func New(dir string, opts ...Option) (*Server, error) {
	s := &Server{maxFileBytes: DefaultMaxFileBytes, logger: zap.NewNop(), calls: map[string]int{}}
	for _, o := range opts {
		o(s)
	}
	if s.maxFileBytes <= 0 {
		return nil, fmt.Errorf("demotool: max file bytes %d: must be positive", s.maxFileBytes)
	}
	if dir == "" {
		return nil, errors.New("demotool: no workspace directory")
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("demotool: open workspace: %w", err)
	}
	s.root = root

	m := s.newMCPServer()
	s.mux = http.NewServeMux()
	s.mux.Handle(MCPPath, mcp.NewStreamableHTTPHandler(
		func(*http.Request) *mcp.Server { return m },
		&mcp.StreamableHTTPOptions{
			Stateless:    true,
			JSONResponse: true,
			// The tool sits behind Envoy (or m1 dev-proxy), which forwards
			// the client's Host, e.g. the tool service's name: the SDK's
			// DNS-rebinding guard would refuse every such request on a
			// loopback listener.
			DisableLocalhostProtection: true,
			MaxRequestBodyBytes:        s.maxBodyBytes(),
		}))
	s.mux.HandleFunc("POST "+ToolsPathPrefix+"{name}", s.serveREST)
	s.mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	return s, nil
}

// ServeHTTP serves POST /mcp (MCP Streamable HTTP), POST /tools/{name}
// (REST) and GET /health.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Calls returns how many calls of tool reached the tool's code so far, by
// either protocol, successful or not.
func (s *Server) Calls(tool string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[tool]
}

// Close releases the workspace directory. Calls after Close fail.
func (s *Server) Close() error { return s.root.Close() }

// Tools returns the names of the tools the server offers.
func Tools() []string { return []string{ReadFile, ListDir, WriteFile, RunCommand} }

// maxBodyBytes bounds a request body: a write_file of the largest file,
// JSON-escaped, with room for the envelope.
func (s *Server) maxBodyBytes() int64 { return 6*s.maxFileBytes + 64<<10 }

func (s *Server) count(tool string) {
	s.mu.Lock()
	s.calls[tool]++
	s.mu.Unlock()
}
