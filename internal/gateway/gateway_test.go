package gateway

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDecodeAnswer(t *testing.T) {
	tests := []struct {
		name, data string
		ok         bool
	}{
		{"approved", `{"status":"approved","proposal_id":"prop_1","token":"a.b.c"}`, true},
		{"pending", `{"status":"pending","proposal_id":"prop_1","expires_at":"2026-03-01T12:00:00Z","retry_after":5}`, true},
		{"rejected", `{"status":"rejected","proposal_id":"prop_1","reason":"not today — «no»"}`, true},
		{"none", `{"status":"none"}`, true},
		{"trailing white space", "{\"status\":\"none\"}\n", true},
		{"approved without a token", `{"status":"approved","proposal_id":"prop_1"}`, false},
		{"approved with a spaced token", `{"status":"approved","proposal_id":"prop_1","token":"a b"}`, false},
		{"pending with a token", `{"status":"pending","proposal_id":"prop_1","token":"t"}`, false},
		{"pending without an id", `{"status":"pending"}`, false},
		{"proposal id for a URL path", `{"status":"pending","proposal_id":"../x"}`, false},
		{"retry_after too long", `{"status":"pending","proposal_id":"p","retry_after":100000}`, false},
		{"none with a token", `{"status":"none","token":"t"}`, false},
		{"unknown status", `{"status":"allow"}`, false},
		{"unknown field", `{"status":"none","allow":true}`, false},
		{"two objects", `{"status":"none"}{"status":"none"}`, false},
		{"not json", `<html>`, false},
		{"reason not UTF-8 (read as U+FFFD)", "{\"status\":\"rejected\",\"proposal_id\":\"p\",\"reason\":\"\xff\"}", true},
		{"reason too long", `{"status":"rejected","proposal_id":"p","reason":"` + strings.Repeat("x", 5000) + `"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeAnswer([]byte(tt.data))
			if (err == nil) != tt.ok {
				t.Fatalf("DecodeAnswer(%s) = %v, want ok %v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestValidateRequests(t *testing.T) {
	const sum = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" // sha256("{}")
	good := FileRequest{Principal: "spiffe://example.org/a", Tool: "write_file", Args: json.RawMessage(`{}`), ArgsSHA256: sum, DecisionID: "d"}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(good) = %v", err)
	}
	for name, mod := range map[string]func(*FileRequest){
		"empty principal":   func(r *FileRequest) { r.Principal = "" },
		"spaced principal":  func(r *FileRequest) { r.Principal = "a b" },
		"long principal":    func(r *FileRequest) { r.Principal = strings.Repeat("a", 513) },
		"bad tool":          func(r *FileRequest) { r.Tool = "a/b" },
		"upper-case hash":   func(r *FileRequest) { r.ArgsSHA256 = strings.ToUpper(sum) },
		"hash of others":    func(r *FileRequest) { r.Args = json.RawMessage(`{"a":1}`) },
		"args not object":   func(r *FileRequest) { r.Args = json.RawMessage(`[]`) },
		"no decision":       func(r *FileRequest) { r.DecisionID = "" },
		"pod with a space":  func(r *FileRequest) { r.Pod = "a b" },
		"sidecar too long":  func(r *FileRequest) { r.Sidecar = strings.Repeat("s", 129) },
		"control character": func(r *FileRequest) { r.Principal = "a\x1bb" },
	} {
		r := good
		mod(&r)
		if err := r.Validate(); err == nil {
			t.Errorf("Validate(%s) = nil, want an error", name)
		}
	}
	if err := (&ClaimRequest{Principal: "p", Tool: "t", ArgsSHA256: sum}).Validate(); err != nil {
		t.Errorf("Validate(claim) = %v", err)
	}
}

func TestNewClientRefuses(t *testing.T) {
	for _, o := range []ClientOptions{
		{BaseURL: "orchestrator:9193", Timeout: 1},
		{BaseURL: "ftp://o", Timeout: 1},
		{BaseURL: "http://o/?q=1", Timeout: 1},
		{BaseURL: "http://user:pw@o", Timeout: 1},
		{BaseURL: "http://o"},
		{BaseURL: "http://o", Timeout: 1, Pod: "a b"},
	} {
		if _, err := NewClient(o); err == nil {
			t.Errorf("NewClient(%+v) = nil error", o)
		}
	}
}

// FuzzDecodeAnswer feeds arbitrary bytes as the orchestrator's answer: the
// sidecar reads it from another process. It must never panic, and
// whatever it accepts is valid for its status: an approval carries a
// token, nothing else does, and a proposal id is safe in a URL path.
func FuzzDecodeAnswer(f *testing.F) {
	f.Add([]byte(`{"status":"approved","proposal_id":"prop_1","token":"a.b.c"}`))
	f.Add([]byte(`{"status":"pending","proposal_id":"prop_1","retry_after":5,"expires_at":"2026-03-01T12:00:00Z"}`))
	f.Add([]byte(`{"status":"rejected","proposal_id":"p","reason":"no"}`))
	f.Add([]byte(`{"status":"none"}`))
	f.Add([]byte(`{"status":"none","token":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := DecodeAnswer(data)
		if err != nil {
			return
		}
		if err := a.Validate(); err != nil {
			t.Fatalf("accepted %q that Validate refuses: %v", data, err)
		}
		if (a.Token != "") != (a.Status == StatusApproved) {
			t.Fatalf("accepted %q: status %s with token %q", data, a.Status, a.Token)
		}
		if a.ProposalID != "" && strings.ContainsAny(a.ProposalID, "/?#% ") {
			t.Fatalf("accepted proposal id %q", a.ProposalID)
		}
	})
}
