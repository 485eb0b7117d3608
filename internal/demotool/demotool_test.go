package demotool_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/m1-agent/m1/internal/demotool"
)

// start serves a demo tool over a workspace holding notes.txt and sub/a.txt,
// next to a file outside it (secret.txt) that no call may read.
func start(t *testing.T) (srv *demotool.Server, url, workspace, outside string) {
	t.Helper()
	base := t.TempDir()
	workspace = filepath.Join(base, "ws")
	outside = filepath.Join(base, "secret.txt")
	must(t, os.MkdirAll(filepath.Join(workspace, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(workspace, "notes.txt"), []byte("hello"), 0o644))
	must(t, os.WriteFile(filepath.Join(workspace, "sub", "a.txt"), []byte("a"), 0o644))
	must(t, os.WriteFile(outside, []byte("secret"), 0o644))
	srv, err := demotool.New(workspace)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.Close()
		_ = srv.Close()
	})
	return srv, hs.URL, workspace, outside
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name string
		dir  string
		opts []demotool.Option
	}{
		{"empty dir", "", nil},
		{"missing dir", filepath.Join(t.TempDir(), "nope"), nil},
		{"zero max file bytes", t.TempDir(), []demotool.Option{demotool.WithMaxFileBytes(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := demotool.New(tt.dir, tt.opts...); err == nil {
				s.Close()
				t.Fatalf("New(%s) = nil error, want an error", tt.name)
			}
		})
	}
}

// TestSDKClient calls every tool through the official SDK client.
func TestSDKClient(t *testing.T) {
	srv, url, workspace, _ := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "demotool-test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url + demotool.MCPPath}, nil)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer cs.Close()

	lt, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("ListTools: %v", err)
	}
	var names []string
	for _, tool := range lt.Tools {
		names = append(names, tool.Name)
	}
	slices.Sort(names)
	if want := slices.Sorted(slices.Values(demotool.Tools())); !slices.Equal(names, want) {
		t.Fatalf("tools/list = %v, want %v", names, want)
	}

	tests := []struct {
		name     string
		tool     string
		args     map[string]any
		wantErr  string // substring of the tool error; "" for success
		wantText string // substring of the text content on success
	}{
		{"write_file", demotool.WriteFile, map[string]any{"path": "out/new.txt", "content": "written"}, "", `"bytes":7`},
		{"read_file", demotool.ReadFile, map[string]any{"path": "out/new.txt"}, "", `"content":"written"`},
		{"list_dir", demotool.ListDir, map[string]any{"path": "sub"}, "", `"name":"a.txt"`},
		{"list_dir root", demotool.ListDir, map[string]any{}, "", `"name":"notes.txt"`},
		{"null arguments", demotool.ListDir, map[string]any(nil), "must be a JSON object", ""},
		{"run_command", demotool.RunCommand, map[string]any{"command": "id"}, demotool.DisabledMessage, ""},
		{"escape", demotool.ReadFile, map[string]any{"path": "../secret.txt"}, "leaves the workspace", ""},
		{"unknown member", demotool.ReadFile, map[string]any{"path": "notes.txt", "mode": "x"}, "unknown field", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tt.tool, Arguments: tt.args})
			if err != nil {
				t.Fatalf("CallTool(%s) = %v", tt.name, err)
			}
			text := ""
			if len(res.Content) > 0 {
				if tc, ok := res.Content[0].(*mcp.TextContent); ok {
					text = tc.Text
				}
			}
			switch {
			case tt.wantErr != "" && (!res.IsError || !strings.Contains(text, tt.wantErr)):
				t.Errorf("CallTool(%s) = isError %v %q, want a tool error with %q", tt.name, res.IsError, text, tt.wantErr)
			case tt.wantErr == "" && (res.IsError || !strings.Contains(text, tt.wantText)):
				t.Errorf("CallTool(%s) = isError %v %q, want success with %q", tt.name, res.IsError, text, tt.wantText)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(workspace, "out", "new.txt")); err != nil || string(b) != "written" {
		t.Errorf("out/new.txt = %q, %v; want written", b, err)
	}
	for tool, want := range map[string]int{demotool.WriteFile: 1, demotool.ReadFile: 3, demotool.ListDir: 3, demotool.RunCommand: 1} {
		if got := srv.Calls(tool); got != want {
			t.Errorf("Calls(%s) = %d, want %d", tool, got, want)
		}
	}
}

// rpc is one JSON-RPC answer.
type rpc struct {
	ID     json.RawMessage `json:"id"`
	Result struct {
		IsError           bool `json:"isError"`
		Content           []struct{ Text string }
		StructuredContent json.RawMessage `json:"structuredContent"`
		ProtocolVersion   string          `json:"protocolVersion"`
	} `json:"result"`
	Error *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// post sends one JSON-RPC message as a raw HTTP client would (the exchange
// the package doc describes) and returns the status and the answer, read
// from application/json or from the first event of text/event-stream.
func post(t *testing.T, url string, header map[string]string, body string) (int, http.Header, *rpc) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+demotool.MCPPath, strings.NewReader(body))
	must(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range header {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	must(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	must(t, err)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, resp.Header, nil
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		raw = firstEventData(t, raw)
	}
	var r rpc
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("answer %q: %v", raw, err)
	}
	return resp.StatusCode, resp.Header, &r
}

// firstEventData returns the data of the first server-sent event.
func firstEventData(t *testing.T, stream []byte) []byte {
	t.Helper()
	var data []byte
	sc := bufio.NewScanner(bytes.NewReader(stream))
	for sc.Scan() {
		line := sc.Text()
		if line == "" && data != nil {
			return data
		}
		if d, ok := strings.CutPrefix(line, "data:"); ok {
			data = append(data, strings.TrimPrefix(d, " ")...)
		}
	}
	if data == nil {
		t.Fatalf("no event in %q", stream)
	}
	return data
}

// TestRawHTTP pins the exchange a plain HTTP client (the orchestrator) uses.
func TestRawHTTP(t *testing.T) {
	srv, url, _, _ := start(t)
	const initialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	const readNotes = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"notes.txt"}}}`
	v0618 := map[string]string{"MCP-Protocol-Version": "2025-06-18"}

	code, h, r := post(t, url, nil, initialize)
	if code != 200 || r.Error != nil || r.Result.ProtocolVersion != "2025-06-18" {
		t.Fatalf("initialize = %d %+v, want 200 and protocol 2025-06-18", code, r)
	}
	if sid := h.Get("Mcp-Session-Id"); sid != "" {
		t.Errorf("initialize set Mcp-Session-Id %q, want none (stateless)", sid)
	}
	if code, _, _ := post(t, url, v0618, `{"jsonrpc":"2.0","method":"notifications/initialized"}`); code != http.StatusAccepted {
		t.Errorf("notifications/initialized = %d, want 202", code)
	}

	tests := []struct {
		name    string
		header  map[string]string
		body    string
		want    int    // HTTP status
		wantOut string // substring of structuredContent (200) or "" when a JSON-RPC error or tool error is expected
		isError bool   // a tool error
		rpcErr  bool   // a JSON-RPC error
	}{
		{"tools/call after initialize", v0618, readNotes, 200, `"content":"hello"`, false, false},
		{"tools/call alone, no version header", nil, readNotes, 200, `"content":"hello"`, false, false},
		{"tools/call, 2025-11-25", map[string]string{"MCP-Protocol-Version": "2025-11-25"}, readNotes, 200, `"size":5`, false, false},
		{"run_command is a tool error", v0618, `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"run_command","arguments":{"command":"id"}}}`, 200, "", true, false},
		{"unknown tool is a JSON-RPC error", v0618, `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}`, 200, "", false, true},
		{"Accept without event-stream", map[string]string{"Accept": "application/json"}, readNotes, 400, "", false, false},
		{"no Content-Type", map[string]string{"Content-Type": ""}, readNotes, 415, "", false, false},
		{"2026-07-28 without Mcp-Method", map[string]string{"MCP-Protocol-Version": "2026-07-28"}, readNotes, 400, "", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, r := post(t, url, tt.header, tt.body)
			if code != tt.want {
				t.Fatalf("POST %s = %d, want %d", tt.name, code, tt.want)
			}
			if code != 200 {
				return
			}
			switch {
			case tt.rpcErr:
				if r.Error == nil {
					t.Errorf("%s: result %+v, want a JSON-RPC error", tt.name, r.Result)
				}
			case r.Error != nil:
				t.Errorf("%s: JSON-RPC error %+v", tt.name, r.Error)
			case r.Result.IsError != tt.isError:
				t.Errorf("%s: isError = %v, want %v (%+v)", tt.name, r.Result.IsError, tt.isError, r.Result.Content)
			case !strings.Contains(string(r.Result.StructuredContent), tt.wantOut):
				t.Errorf("%s: structuredContent = %s, want %s", tt.name, r.Result.StructuredContent, tt.wantOut)
			}
		})
	}
	// read_file ran for the three successful reads only.
	if got := srv.Calls(demotool.ReadFile); got != 3 {
		t.Errorf("Calls(read_file) = %d, want 3", got)
	}

	resp, err := http.Get(url + demotool.MCPPath)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /mcp = %d, want 405 (stateless: no session stream)", resp.StatusCode)
	}
}

func restCall(t *testing.T, url, tool, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url+demotool.ToolsPathPrefix+tool, "application/json", strings.NewReader(body))
	must(t, err)
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("POST /tools/%s: answer is not a JSON object: %v", tool, err)
	}
	return resp.StatusCode, out
}

func TestREST(t *testing.T) {
	srv, url, workspace, _ := start(t)
	tests := []struct {
		name, tool, body string
		want             int
		wantKey, wantVal string // a member of the answer
	}{
		{"read_file", "read_file", `{"path":"notes.txt"}`, 200, "content", "hello"},
		{"read_file nested", "read_file", `{"path":"sub/./a.txt"}`, 200, "path", "sub/a.txt"},
		{"list_dir empty body", "list_dir", ``, 200, "path", "."},
		{"write_file", "write_file", `{"path":"w.txt","content":"x"}`, 200, "path", "w.txt"},
		{"run_command", "run_command", `{"command":"id"}`, 403, "message", demotool.DisabledMessage},
		{"unknown tool", "rm_rf", `{}`, 404, "error", demotool.CodeUnknownTool},
		{"missing file", "read_file", `{"path":"nope.txt"}`, 404, "error", demotool.CodeNotFound},
		{"missing path", "read_file", `{}`, 400, "error", demotool.CodeBadArguments},
		{"path not a string", "read_file", `{"path":1}`, 400, "error", demotool.CodeBadArguments},
		{"array body", "read_file", `[]`, 400, "error", demotool.CodeBadArguments},
		{"trailing data", "read_file", `{"path":"notes.txt"} {}`, 400, "error", demotool.CodeBadArguments},
		{"write without content", "write_file", `{"path":"w2.txt"}`, 400, "error", demotool.CodeBadArguments},
		{"read a directory", "read_file", `{"path":"sub"}`, 400, "error", demotool.CodeBadArguments},
		{"list a file", "list_dir", `{"path":"notes.txt"}`, 400, "error", demotool.CodeBadArguments},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out := restCall(t, url, tt.tool, tt.body)
			if code != tt.want || out[tt.wantKey] != tt.wantVal {
				t.Errorf("POST /tools/%s %s = %d %v, want %d with %s=%q", tt.tool, tt.body, code, out, tt.want, tt.wantKey, tt.wantVal)
			}
		})
	}
	if b, _ := os.ReadFile(filepath.Join(workspace, "w.txt")); string(b) != "x" {
		t.Errorf("w.txt = %q, want x", b)
	}
	if _, err := os.Stat(filepath.Join(workspace, "w2.txt")); err == nil {
		t.Error("w2.txt exists after a refused write")
	}
	if got := srv.Calls(demotool.WriteFile); got != 2 {
		t.Errorf("Calls(write_file) = %d, want 2 (both reached the tool)", got)
	}
	if got := srv.Calls("rm_rf"); got != 0 {
		t.Errorf("Calls(rm_rf) = %d, want 0", got)
	}
	resp, err := http.Get(url + demotool.ToolsPathPrefix + "read_file")
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /tools/read_file = %d, want 405", resp.StatusCode)
	}
}

func TestMaxFileBytes(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "big.txt"), bytes.Repeat([]byte("x"), 11), 0o644))
	srv, err := demotool.New(dir, demotool.WithMaxFileBytes(10))
	must(t, err)
	defer srv.Close()
	hs := httptest.NewServer(srv)
	defer hs.Close()
	for _, tt := range []struct{ name, tool, body string }{
		{"read", "read_file", `{"path":"big.txt"}`},
		{"write", "write_file", `{"path":"new.txt","content":"01234567890"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if code, out := restCall(t, hs.URL, tt.tool, tt.body); code != 413 || out["error"] != demotool.CodeTooLarge {
				t.Errorf("%s over the limit = %d %v, want 413 too_large", tt.name, code, out)
			}
		})
	}
}

// TestPathConfinement tries every way out of the workspace, by both
// protocols and with every tool that takes a path.
func TestPathConfinement(t *testing.T) {
	srv, url, workspace, outside := start(t)
	base := filepath.Dir(workspace)
	must(t, os.Symlink(outside, filepath.Join(workspace, "link-out")))              // absolute, outside
	must(t, os.Symlink("../secret.txt", filepath.Join(workspace, "rel-out")))       // relative, outside
	must(t, os.Symlink(base, filepath.Join(workspace, "dir-out")))                  // a directory outside
	must(t, os.Symlink("notes.txt", filepath.Join(workspace, "link-in")))           // inside: allowed
	must(t, os.Symlink("../notes.txt", filepath.Join(workspace, "sub", "link-up"))) // up, but inside: allowed

	refused := []string{
		outside,                // absolute
		"/etc/hosts",           // absolute
		"../secret.txt",        // ..
		"sub/../../secret.txt", // .. after a segment
		"link-out",             // absolute symlink
		"rel-out",              // relative symlink leading out
		"dir-out/secret.txt",   // through a directory symlink
		"dir-out",              // the directory symlink itself
	}
	for _, p := range refused {
		for _, tool := range []string{demotool.ReadFile, demotool.ListDir, demotool.WriteFile} {
			t.Run(tool+" "+p, func(t *testing.T) {
				args, _ := json.Marshal(map[string]string{"path": p})
				if tool == demotool.WriteFile {
					args, _ = json.Marshal(map[string]string{"path": p, "content": "pwned"})
				}
				code, out := restCall(t, url, tool, string(args))
				if code != http.StatusForbidden || out["error"] != demotool.CodePathRefused {
					t.Errorf("REST %s %s = %d %v, want 403 path_refused", tool, p, code, out)
				}
				body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":` + string(args) + `}}`
				if _, _, r := post(t, url, nil, body); r == nil || !r.Result.IsError {
					t.Errorf("MCP %s %s = %+v, want a tool error", tool, p, r)
				}
			})
		}
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "secret" {
		t.Fatalf("outside file = %q, %v; want it untouched", b, err)
	}
	for _, p := range []string{"link-in", "sub/link-up"} {
		if code, out := restCall(t, url, demotool.ReadFile, `{"path":"`+p+`"}`); code != 200 || out["content"] != "hello" {
			t.Errorf("read_file %s = %d %v, want 200 hello", p, code, out)
		}
	}
	if srv.Calls(demotool.ReadFile) == 0 {
		t.Error("Calls(read_file) = 0 after refused reads, want them counted")
	}
}

// TestHealth: the container health check's endpoint answers GET only and
// runs no tool.
func TestHealth(t *testing.T) {
	srv, url, _, _ := start(t)
	resp, err := http.Get(url + demotool.HealthPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ok"`) {
		t.Errorf("GET /health = %d %s, want 200 ok", resp.StatusCode, body)
	}
	resp, err = http.Post(url+demotool.HealthPath, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /health = %d, want 405", resp.StatusCode)
	}
	for _, tool := range demotool.Tools() {
		if n := srv.Calls(tool); n != 0 {
			t.Errorf("Calls(%s) = %d after health checks, want 0", tool, n)
		}
	}
}
