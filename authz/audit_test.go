package authz

import (
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/m1-agent/m1/internal/store"
)

// auditLog is an Auditor that keeps what it is given.
type auditLog struct {
	mu     sync.Mutex
	events []store.Event
}

func (a *auditLog) Record(e store.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, e)
}

func (a *auditLog) last(t *testing.T) store.Event {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.events) == 0 {
		t.Fatal("no audit event recorded")
	}
	return a.events[len(a.events)-1]
}

// Audit volume is bounded by what was allowed (DESIGN §7): a denied call
// keeps its args_sha256 and never its arguments, even for a tool whose
// arguments the registry lets the trail keep, and a deny reason that
// quotes the caller's bytes is cut.
func TestAuditKeepsArgumentsOfAllowedCallsOnly(t *testing.T) {
	s := newService(t, defaultEngine(t), false)
	log := &auditLog{}
	s.opts.Audit = log

	big := `{"path":"/x","content":"` + strings.Repeat("A", 256<<10) + `"}`
	longKey := strings.Repeat("k", 8<<10)
	for _, tc := range []struct {
		name     string
		req      string // an MCP tools/call body
		allowed  bool
		wantArgs string // "" for none
	}{
		{"allowed read_file keeps its arguments", mcpCall("read_file", `{"path":"/etc/hosts"}`), true, `{"path":"/etc/hosts"}`},
		// write_file is non-sensitive in the default registry: before, its
		// denied arguments were stored, whatever their size.
		{"denied write_file keeps the hash only", mcpCall("write_file", big), false, ""},
		{"denied sensitive tool keeps the hash only", mcpCall("run_command", `{"cmd":"ls"}`), false, ""},
		{"deny whose reason quotes the caller", mcpCall("read_file", `{"`+longKey+`":1,"`+longKey+`":2}`), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := check(t, s.Service, httpReq("POST", "/mcp", tc.req))
			if r.allowed != tc.allowed {
				t.Fatalf("Check = allowed %v (%s), want %v", r.allowed, r.raw, tc.allowed)
			}
			e := log.last(t)
			if string(e.Args) != tc.wantArgs {
				t.Errorf("audit args = %.80q (%d bytes), want %q", e.Args, len(e.Args), tc.wantArgs)
			}
			if e.ArgsSHA256 == "" && tc.name != "deny whose reason quotes the caller" {
				t.Errorf("audit args_sha256 is empty, want the arguments' hash")
			}
			if tc.allowed {
				return
			}
			if len(e.Detail) > auditDetailBytes+len("…") || !utf8.ValidString(e.Detail) {
				t.Errorf("audit detail is %d bytes (valid UTF-8: %v), want at most %d", len(e.Detail), utf8.ValidString(e.Detail), auditDetailBytes+len("…"))
			}
			if len(r.body.Reason) <= auditDetailBytes && tc.name == "deny whose reason quotes the caller" {
				t.Fatalf("deny reason is %d bytes: the case no longer quotes the caller (%q)", len(r.body.Reason), r.body.Reason)
			}
		})
	}
}

func TestClipText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"abcdefghijk", 10, "abcdefghij…"},
		{"abcdefghé", 9, "abcdefgh…"}, // é is two bytes: never cut in half
		{"", 0, ""},
	} {
		if got := clipText(tc.in, tc.n); got != tc.want {
			t.Errorf("clipText(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
