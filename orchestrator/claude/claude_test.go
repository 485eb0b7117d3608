package claude_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anthropics/anthropic-sdk-go"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/orchestrator"
	"github.com/m1-agent/m1/orchestrator/claude"
)

const testKey = "sk-test-key"

// answer is one canned HTTP answer of the fake Messages API.
type answer struct {
	status int
	header map[string]string
	body   string
}

func ok(body string) answer { return answer{status: http.StatusOK, body: body} }

// fastRetry answers status with a retry-after-ms short enough for tests.
func fastRetry(status int, errType string) answer {
	return answer{
		status: status,
		header: map[string]string{"retry-after-ms": "1"},
		body:   `{"type":"error","error":{"type":"` + errType + `","message":"try later"}}`,
	}
}

// wireRequest is what the fake decodes from a Messages request.
type wireRequest struct {
	Model     string `json:"model"`
	MaxTokens int64  `json:"max_tokens"`
	System    []struct {
		Type         string          `json:"type"`
		Text         string          `json:"text"`
		CacheControl json.RawMessage `json:"cache_control"`
	} `json:"system"`
	Messages []struct {
		Role    string      `json:"role"`
		Content []wireBlock `json:"content"`
	} `json:"messages"`
	Tools []struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		InputSchema json.RawMessage `json:"input_schema"`
	} `json:"tools"`
}

type wireBlock struct {
	Type      string          `json:"type"`
	Text      string          `json:"text"`
	ID        string          `json:"id"`
	Name      string          `json:"name"`
	Input     json.RawMessage `json:"input"`
	ToolUseID string          `json:"tool_use_id"`
	IsError   bool            `json:"is_error"`
	Content   []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
}

// fakeAPI is a local server speaking the Messages API: it checks the
// request, records it, and gives the next canned answer (the last one
// repeats).
type fakeAPI struct {
	t       *testing.T
	srv     *httptest.Server
	answers []answer

	mu   sync.Mutex
	reqs []wireRequest
}

func newFakeAPI(t *testing.T, answers ...answer) *fakeAPI {
	t.Helper()
	f := &fakeAPI{t: t, answers: answers}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/messages" {
		f.t.Errorf("request %s %s, want POST /v1/messages", r.Method, r.URL.Path)
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Header.Get("anthropic-version") == "" {
		f.t.Errorf("request without anthropic-version header")
	}
	if ct := r.Header.Get("content-type"); !strings.HasPrefix(ct, "application/json") {
		f.t.Errorf("content-type = %q, want application/json", ct)
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.t.Errorf("read request: %v", err)
		return
	}
	var req wireRequest
	if err := json.Unmarshal(body, &req); err != nil {
		f.t.Errorf("request body is not a Messages request: %v\n%s", err, body)
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	a := f.answers[min(len(f.reqs), len(f.answers))-1]
	f.mu.Unlock()

	w.Header().Set("content-type", "application/json")
	if r.Header.Get("x-api-key") != testKey {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}`)
		return
	}
	for k, v := range a.header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(a.status)
	io.WriteString(w, a.body)
}

func (f *fakeAPI) requests() []wireRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wireRequest(nil), f.reqs...)
}

func (f *fakeAPI) planner(t *testing.T, edit func(*claude.Options)) *claude.Planner {
	t.Helper()
	opts := claude.DefaultOptions()
	opts.APIKey = testKey
	opts.BaseURL = f.srv.URL
	opts.HTTPClient = f.srv.Client()
	opts.Timeout = 5 * time.Second
	if edit != nil {
		edit(&opts)
	}
	p, err := claude.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

var testTools = []orchestrator.Tool{
	{Name: "list_dir", Description: "List a directory.", Risk: "read",
		InputSchema: json.RawMessage(`{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}`)},
	{Name: "read_file", Description: "Read a file.", Risk: "read"},
	{Name: "write_file", Description: "Write a file.", Risk: "write"},
}

func session() orchestrator.Session {
	return orchestrator.Session{RunID: "run-1", Agent: "agent-42", Goal: "Tidy the notes.", Tools: testTools}
}

// message builds a Messages reply.
func message(stop string, content ...string) string {
	return `{"id":"msg_1","type":"message","role":"assistant","model":"claude-test-1",` +
		`"content":[` + strings.Join(content, ",") + `],"stop_reason":"` + stop + `","stop_sequence":null,` +
		`"usage":{"input_tokens":100,"output_tokens":20,"cache_read_input_tokens":30,"cache_creation_input_tokens":40}}`
}

func text(s string) string { return `{"type":"text","text":"` + s + `"}` }

func toolUse(id, name, input string) string {
	return `{"type":"tool_use","id":"` + id + `","name":"` + name + `","input":` + input + `}`
}

var testUsage = []orchestrator.LLMUsage{{Model: "claude-test-1", InputTokens: 100, OutputTokens: 20, CacheReadTokens: 30, CacheWriteTokens: 40}}

func TestNextReply(t *testing.T) {
	for _, tc := range []struct {
		name    string
		body    string
		want    orchestrator.Step
		wantErr bool
		errUsed []orchestrator.LLMUsage // usage on the *PlannerError
	}{
		{
			name: "text and two tool uses",
			body: message("tool_use", text("First I look around."),
				toolUse("toolu_1", "list_dir", `{"path": ".",  "depth": 1}`),
				toolUse("toolu_2", "read_file", `{"path":"notes.txt"}`)),
			want: orchestrator.Step{
				Text: "First I look around.",
				Calls: []orchestrator.Call{
					{ID: "toolu_1", Tool: "list_dir", Args: json.RawMessage(`{"path": ".",  "depth": 1}`), Reasoning: "First I look around."},
					{ID: "toolu_2", Tool: "read_file", Args: json.RawMessage(`{"path":"notes.txt"}`), Reasoning: "First I look around."},
				},
				LLM: testUsage,
			},
		},
		{
			name: "two text blocks are joined",
			body: message("tool_use", text("One."), text("Two."), toolUse("toolu_1", "read_file", `{}`)),
			want: orchestrator.Step{
				Text:  "One.\n\nTwo.",
				Calls: []orchestrator.Call{{ID: "toolu_1", Tool: "read_file", Args: json.RawMessage(`{}`), Reasoning: "One.\n\nTwo."}},
				LLM:   testUsage,
			},
		},
		{
			name: "end turn",
			body: message("end_turn", text("All done.")),
			want: orchestrator.Step{Text: "All done.", Done: true, LLM: testUsage},
		},
		{
			name: "end turn with empty content",
			body: message("end_turn"),
			want: orchestrator.Step{Done: true, LLM: testUsage},
		},
		{
			name: "end turn with a tool use is done",
			body: message("end_turn", toolUse("toolu_1", "read_file", `{"path":"a"}`)),
			want: orchestrator.Step{
				Calls: []orchestrator.Call{{ID: "toolu_1", Tool: "read_file", Args: json.RawMessage(`{"path":"a"}`)}},
				Done:  true,
				LLM:   testUsage,
			},
		},
		{
			name: "max tokens with a whole tool use goes on",
			body: message("max_tokens", toolUse("toolu_1", "read_file", `{"path":"a"}`)),
			want: orchestrator.Step{
				Calls: []orchestrator.Call{{ID: "toolu_1", Tool: "read_file", Args: json.RawMessage(`{"path":"a"}`)}},
				LLM:   testUsage,
			},
		},
		{
			name: "other blocks are ignored",
			body: message("end_turn", `{"type":"thinking","thinking":"hmm","signature":"x"}`, text("Done.")),
			want: orchestrator.Step{Text: "Done.", Done: true, LLM: testUsage},
		},
		{
			name: "no model in the reply",
			body: `{"type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":1}}`,
			want: orchestrator.Step{Done: true, LLM: []orchestrator.LLMUsage{{Model: "claude-req", InputTokens: 5, OutputTokens: 1}}},
		},
		{name: "unknown tool", body: message("tool_use", toolUse("toolu_1", "rm_rf", `{}`)), wantErr: true, errUsed: testUsage},
		{name: "input not an object", body: message("tool_use", toolUse("toolu_1", "read_file", `["a"]`)), wantErr: true, errUsed: testUsage},
		{name: "input null", body: message("tool_use", toolUse("toolu_1", "read_file", `null`)), wantErr: true, errUsed: testUsage},
		{name: "tool use without id", body: message("tool_use", toolUse("", "read_file", `{}`)), wantErr: true, errUsed: testUsage},
		{name: "repeated tool use id", body: message("tool_use", toolUse("t", "read_file", `{}`), toolUse("t", "list_dir", `{}`)), wantErr: true, errUsed: testUsage},
		{name: "max tokens without tool use", body: message("max_tokens", text("I was about to")), wantErr: true, errUsed: testUsage},
		{name: "tool_use stop without tool use", body: message("tool_use", text("hm")), wantErr: true, errUsed: testUsage},
		{name: "refusal", body: message("refusal", text("No.")), wantErr: true, errUsed: testUsage},
		{name: "not JSON", body: `<html>bad gateway</html>`, wantErr: true},
		{name: "truncated JSON", body: message("end_turn")[:40], wantErr: true},
		{
			name:    "missing content",
			body:    `{"type":"message","model":"claude-test-1","stop_reason":"end_turn","usage":{"input_tokens":100,"output_tokens":20,"cache_read_input_tokens":30,"cache_creation_input_tokens":40}}`,
			wantErr: true, errUsed: testUsage,
		},
		{
			name:    "content of the wrong type",
			body:    `{"type":"message","model":"claude-test-1","content":"hello","stop_reason":"end_turn","usage":{"input_tokens":100,"output_tokens":20,"cache_read_input_tokens":30,"cache_creation_input_tokens":40}}`,
			wantErr: true, errUsed: testUsage,
		},
		{name: "text of the wrong type", body: message("end_turn", `{"type":"text","text":42}`), wantErr: true, errUsed: testUsage},
		{name: "missing stop reason", body: `{"type":"message","content":[],"usage":{"input_tokens":1,"output_tokens":1}}`, wantErr: true,
			errUsed: []orchestrator.LLMUsage{{Model: "claude-req", InputTokens: 1, OutputTokens: 1}}},
		{name: "missing usage", body: `{"type":"message","content":[],"stop_reason":"end_turn"}`, wantErr: true},
		{name: "negative usage", body: `{"type":"message","content":[],"stop_reason":"end_turn","usage":{"input_tokens":-1,"output_tokens":1}}`, wantErr: true},
		{name: "not a message", body: `{"type":"error","error":{"type":"overloaded_error"}}`, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t, ok(tc.body))
			p := f.planner(t, func(o *claude.Options) { o.Model = "claude-req" })
			got, err := p.Next(context.Background(), session())
			if tc.wantErr {
				if !errors.Is(err, orchestrator.ErrPlanner) {
					t.Fatalf("Next(%s) error = %v, want one wrapping ErrPlanner", tc.name, err)
				}
				var pe *orchestrator.PlannerError
				if !errors.As(err, &pe) {
					t.Fatalf("Next(%s) error = %T, want *orchestrator.PlannerError", tc.name, err)
				}
				if !reflect.DeepEqual(pe.LLM, tc.errUsed) {
					t.Errorf("Next(%s) PlannerError.LLM = %+v, want %+v", tc.name, pe.LLM, tc.errUsed)
				}
				return
			}
			if err != nil {
				t.Fatalf("Next(%s): %v", tc.name, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Next(%s) =\n%+v\nwant\n%+v", tc.name, got, tc.want)
			}
			for i, c := range got.Calls {
				// Exactly the bytes received, not re-encoded.
				if string(c.Args) != string(tc.want.Calls[i].Args) {
					t.Errorf("call %d args = %s, want %s", i, c.Args, tc.want.Calls[i].Args)
				}
			}
		})
	}
}

func TestNextRequest(t *testing.T) {
	f := newFakeAPI(t, ok(message("end_turn", text("ok"))))
	p := f.planner(t, func(o *claude.Options) {
		o.Model = "claude-req"
		o.MaxTokens = 777
		o.System = "Be careful."
	})
	if _, err := p.Next(context.Background(), session()); err != nil {
		t.Fatalf("Next: %v", err)
	}
	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("fake saw %d requests, want 1", len(reqs))
	}
	req := reqs[0]
	if req.Model != "claude-req" || req.MaxTokens != 777 {
		t.Errorf("model, max_tokens = %q, %d; want claude-req, 777", req.Model, req.MaxTokens)
	}
	if len(req.System) != 1 || req.System[0].Text != "Be careful." {
		t.Fatalf("system = %+v, want one block %q", req.System, "Be careful.")
	}
	if canonical(req.System[0].CacheControl) != `{"type":"ephemeral"}` {
		t.Errorf("system cache_control = %s, want ephemeral", req.System[0].CacheControl)
	}

	type tool struct{ name, desc, schema string }
	var tools []tool
	for _, tl := range req.Tools {
		tools = append(tools, tool{tl.Name, tl.Description, compact(t, tl.InputSchema)})
	}
	wantTools := []tool{
		{"list_dir", "List a directory. (risk: read)", canonical([]byte(`{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}`))},
		{"read_file", "Read a file. (risk: read)", `{"type":"object"}`},
		{"write_file", "Write a file. (risk: write)", `{"type":"object"}`},
	}
	if !reflect.DeepEqual(tools, wantTools) {
		t.Errorf("tools =\n%+v\nwant\n%+v", tools, wantTools)
	}

	if len(req.Messages) != 1 || req.Messages[0].Role != "user" || len(req.Messages[0].Content) != 1 {
		t.Fatalf("messages = %+v, want one user message with one block", req.Messages)
	}
	goal := req.Messages[0].Content[0]
	if goal.Type != "text" || !strings.Contains(goal.Text, "Tidy the notes.") || !strings.Contains(goal.Text, "agent-42") {
		t.Errorf("first message = %+v, want a text block with the goal and the agent", goal)
	}
}

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	if !json.Valid(raw) {
		t.Fatalf("not JSON: %s", raw)
	}
	return canonical(raw)
}

// canonical re-encodes JSON text so that key order does not matter.
func canonical(b []byte) string {
	var v any
	_ = json.Unmarshal(b, &v)
	out, _ := json.Marshal(v)
	return string(out)
}

func TestNextHistory(t *testing.T) {
	f := newFakeAPI(t, ok(message("end_turn", text("Stopping."))))
	p := f.planner(t, nil)
	s := session()
	s.History = []orchestrator.StepRecord{
		{
			Text: "Look, then write.",
			Calls: []orchestrator.Call{
				{ID: "toolu_a", Tool: "list_dir", Args: json.RawMessage(`{"path":"."}`)},
				{ID: "toolu_b", Tool: "write_file", Args: json.RawMessage(`{"path":"n.txt","content":"x"}`)},
				{ID: "toolu_c", Tool: "write_file", Args: json.RawMessage(`{"path":"m.txt"}`)},
				{ID: "toolu_d", Tool: "read_file", Args: json.RawMessage(`{"path":"gone"}`)},
			},
			Results: []orchestrator.Outcome{
				{Status: store.ProposalExecuted, Result: json.RawMessage(`{"entries":["n.txt"]}`)},
				{Status: store.ProposalRejected, Error: "too risky"},
				{Status: store.ProposalExpired, Error: "expired"},
				{Status: store.ProposalFailed, Error: "no such file"},
			},
		},
	}
	if _, err := p.Next(context.Background(), s); err != nil {
		t.Fatalf("Next: %v", err)
	}
	req := f.requests()[0]
	var roles []string
	for _, m := range req.Messages {
		roles = append(roles, m.Role)
	}
	if want := []string{"user", "assistant", "user"}; !reflect.DeepEqual(roles, want) {
		t.Fatalf("message roles = %v, want %v", roles, want)
	}

	said := req.Messages[1].Content
	if len(said) != 5 || said[0].Type != "text" || said[0].Text != "Look, then write." {
		t.Fatalf("assistant message = %+v, want the text then four tool_use blocks", said)
	}
	wantUse := []struct{ id, name, input string }{
		{"toolu_a", "list_dir", `{"path":"."}`},
		{"toolu_b", "write_file", `{"path":"n.txt","content":"x"}`},
		{"toolu_c", "write_file", `{"path":"m.txt"}`},
		{"toolu_d", "read_file", `{"path":"gone"}`},
	}
	for i, w := range wantUse {
		b := said[i+1]
		if b.Type != "tool_use" || b.ID != w.id || b.Name != w.name || canonical(b.Input) != canonical([]byte(w.input)) {
			t.Errorf("assistant block %d = %+v, want tool_use %s %s %s", i+1, b, w.id, w.name, w.input)
		}
	}

	results := req.Messages[2].Content
	wantResults := []struct {
		id      string
		isError bool
		text    string
	}{
		{"toolu_a", false, `{"entries":["n.txt"]}`},
		{"toolu_b", true, "rejected by the operator: too risky"},
		{"toolu_c", true, "expired: no operator approved the call in time"},
		{"toolu_d", true, "failed: no such file"},
	}
	if len(results) != len(wantResults) {
		t.Fatalf("user message = %+v, want %d tool_result blocks", results, len(wantResults))
	}
	for i, w := range wantResults {
		b := results[i]
		if b.Type != "tool_result" || b.ToolUseID != w.id || b.IsError != w.isError || len(b.Content) != 1 || b.Content[0].Text != w.text {
			t.Errorf("tool_result %d = %+v, want id %s is_error %v text %q", i, b, w.id, w.isError, w.text)
		}
	}
}

func TestNextToolNames(t *testing.T) {
	// Claude's tool names cannot hold '.'; M1's can.
	// A name Claude accepts keeps it; the others are mapped, and a
	// mapped name that collides gets a suffix.
	f := newFakeAPI(t, ok(message("tool_use", toolUse("toolu_1", "fs_write_2", `{"path":"a"}`))))
	p := f.planner(t, nil)
	s := session()
	s.Tools = []orchestrator.Tool{{Name: "fs.write"}, {Name: "fs_write"}, {Name: "net.get"}}
	s.History = []orchestrator.StepRecord{{
		Calls:   []orchestrator.Call{{ID: "c.1", Tool: "net.get", Args: json.RawMessage(`{}`)}},
		Results: []orchestrator.Outcome{{Status: store.ProposalExecuted, Result: json.RawMessage(`1`)}},
	}}
	got, err := p.Next(context.Background(), s)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if len(got.Calls) != 1 || got.Calls[0].Tool != "fs.write" {
		t.Errorf("calls = %+v, want one call to fs.write", got.Calls)
	}
	req := f.requests()[0]
	var sent []string
	for _, tl := range req.Tools {
		sent = append(sent, tl.Name)
	}
	if want := []string{"fs_write_2", "fs_write", "net_get"}; !reflect.DeepEqual(sent, want) {
		t.Errorf("tool names sent = %v, want %v", sent, want)
	}
	use, result := req.Messages[1].Content[0], req.Messages[2].Content[0]
	if use.Name != "net_get" || use.ID == "c.1" || result.ToolUseID != use.ID {
		t.Errorf("history = tool_use %+v, tool_result %+v; want net_get with a valid id matched by the result", use, result)
	}
}

func TestNextRetry(t *testing.T) {
	success := ok(message("end_turn", text("ok")))
	for _, tc := range []struct {
		name       string
		key        string
		answers    []answer
		maxRetries int
		wantReqs   int
		wantStatus int // 0: success
	}{
		{name: "429 then success", answers: []answer{fastRetry(429, "rate_limit_error"), success}, wantReqs: 2},
		{name: "429 with retry-after 0 then success", answers: []answer{
			{status: 429, header: map[string]string{"retry-after": "0"}, body: `{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}`},
			success,
		}, wantReqs: 2},
		{name: "529 then success", answers: []answer{fastRetry(529, "overloaded_error"), success}, wantReqs: 2},
		{name: "500 twice then success", answers: []answer{fastRetry(500, "api_error"), fastRetry(500, "api_error"), success}, wantReqs: 3},
		{name: "persistent 429", answers: []answer{fastRetry(429, "rate_limit_error")}, wantReqs: 3, wantStatus: 429},
		{name: "persistent 500", answers: []answer{fastRetry(500, "api_error")}, wantReqs: 3, wantStatus: 500},
		{name: "persistent 529 with 4 retries", answers: []answer{fastRetry(529, "overloaded_error")}, maxRetries: 4, wantReqs: 5, wantStatus: 529},
		{name: "no retry", answers: []answer{fastRetry(429, "rate_limit_error")}, maxRetries: -1, wantReqs: 1, wantStatus: 429},
		{name: "401 is not retried", key: "sk-wrong", answers: []answer{success}, wantReqs: 1, wantStatus: 401},
		{name: "400 is not retried", answers: []answer{{status: 400, body: `{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}`}}, wantReqs: 1, wantStatus: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAPI(t, tc.answers...)
			p := f.planner(t, func(o *claude.Options) {
				o.MaxRetries = tc.maxRetries
				if tc.key != "" {
					o.APIKey = tc.key
				}
			})
			got, err := p.Next(context.Background(), session())
			if n := len(f.requests()); n != tc.wantReqs {
				t.Errorf("fake saw %d requests, want %d", n, tc.wantReqs)
			}
			if tc.wantStatus == 0 {
				if err != nil || !got.Done {
					t.Fatalf("Next = %+v, %v; want done", got, err)
				}
				return
			}
			var apiErr *anthropic.Error
			if !errors.As(err, &apiErr) || apiErr.StatusCode != tc.wantStatus {
				t.Fatalf("Next error = %v, want an API error with status %d", err, tc.wantStatus)
			}
			if errors.Is(err, orchestrator.ErrPlanner) {
				t.Errorf("Next error = %v wraps ErrPlanner, want an API error only", err)
			}
		})
	}
}

func TestNextContext(t *testing.T) {
	f := newFakeAPI(t, answer{status: 429, header: map[string]string{"retry-after": "60"}, body: `{}`})
	p := f.planner(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Next(ctx, session()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next error = %v, want context.DeadlineExceeded", err)
	}
}

func TestNextBadSchema(t *testing.T) {
	f := newFakeAPI(t, ok(message("end_turn")))
	p := f.planner(t, nil)
	s := session()
	s.Tools = []orchestrator.Tool{{Name: "x", InputSchema: json.RawMessage(`[1]`)}}
	if _, err := p.Next(context.Background(), s); err == nil || !strings.Contains(err.Error(), `tool "x"`) {
		t.Fatalf("Next error = %v, want one naming tool \"x\"", err)
	}
	if n := len(f.requests()); n != 0 {
		t.Errorf("fake saw %d requests, want none", n)
	}
}

func TestNew(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*claude.Options)
		field string // in the error; "" means valid
	}{
		{name: "defaults with a key", edit: func(o *claude.Options) {}},
		{name: "zero options with a key", edit: func(o *claude.Options) { *o = claude.Options{APIKey: testKey} }},
		{name: "no API key", edit: func(o *claude.Options) { o.APIKey = "" }, field: "APIKey"},
		{name: "base URL not a URL", edit: func(o *claude.Options) { o.BaseURL = "::" }, field: "BaseURL"},
		{name: "base URL without scheme", edit: func(o *claude.Options) { o.BaseURL = "api.example.com" }, field: "BaseURL"},
		{name: "negative max tokens", edit: func(o *claude.Options) { o.MaxTokens = -1 }, field: "MaxTokens"},
		{name: "max tokens needing streaming", edit: func(o *claude.Options) { o.MaxTokens = 1 << 20 }, field: "MaxTokens"},
		{name: "max retries below -1", edit: func(o *claude.Options) { o.MaxRetries = -2 }, field: "MaxRetries"},
		{name: "negative timeout", edit: func(o *claude.Options) { o.Timeout = -time.Second }, field: "Timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := claude.DefaultOptions()
			opts.APIKey = testKey
			tc.edit(&opts)
			_, err := claude.New(opts)
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("New(%s) = %v, want nil", tc.name, err)
			case tc.field != "" && (err == nil || !strings.Contains(err.Error(), "Options."+tc.field)):
				t.Fatalf("New(%s) = %v, want an error naming Options.%s", tc.name, err, tc.field)
			}
		})
	}
}

func TestConcurrentNext(t *testing.T) {
	f := newFakeAPI(t, ok(message("tool_use", toolUse("toolu_1", "read_file", `{"path":"a"}`))))
	p := f.planner(t, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if _, err := p.Next(context.Background(), session()); err != nil {
				t.Errorf("Next: %v", err)
			}
		})
	}
	wg.Wait()
	if n := len(f.requests()); n != 8 {
		t.Errorf("fake saw %d requests, want 8", n)
	}
}
