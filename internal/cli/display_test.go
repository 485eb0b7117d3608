package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestEscapeTerminal(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"plain", "write_file", "write_file"},
		{"empty", "", ""},
		{"letters beyond ASCII", "café Ωμέγα 日本語 🙂", "café Ωμέγα 日本語 🙂"},
		{"backslash kept", `C:\tmp\x`, `C:\tmp\x`},
		{"clear screen", "\x1b[2J", `\x1b[2J`},
		{"colour", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"OSC title", "\x1b]0;owned\x07", `\x1b]0;owned\x07`},
		{"carriage return", "rm -rf /\rls", `rm -rf /\rls`},
		{"newline and tab", "a\nb\tc", `a\nb\tc`},
		{"backspace overwrite", "safe\b\b\b\bevil", `safe\x08\x08\x08\x08evil`},
		{"NUL and DEL", "a\x00b\x7f", `a\x00b\x7f`},
		{"C1 CSI and NEL", "\u009b31m\u0085", `\u009b31m\u0085`},
		{"trojan source", "access_level != \"user\u202e \u2066// Check if admin\u2069 \u2066\"", `access_level != "user\u202e \u2066// Check if admin\u2069 \u2066"`},
		{"every bidi control", "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069", `\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069`},
		{"zero width", "ad\u200bmin\u200c\u200d\u2060\ufeff", `ad\u200bmin\u200c\u200d\u2060\ufeff`},
		{"soft hyphen", "pass\u00adwd", `pass\u00adwd`},
		{"tag characters", "a\U000E0041\U000E007F", `a\U000e0041\U000e007f`},
		{"line and paragraph separators", "a\u2028b\u2029c", `a\u2028b\u2029c`},
		{"spaces that are not U+0020", "rm\u00a0-rf\u3000/\u2007", `rm\u00a0-rf\u3000/\u2007`},
		{"hangul filler", "\u3164name", `\u3164name`},
		{"variation selector", "x\ufe0f", `x\ufe0f`},
		{"private use", "\ue000", `\ue000`},
		{"invalid UTF-8", "a\xffb\xc0", `a\xffb\xc0`},
		{"replacement character kept", "\ufffd", "\ufffd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := escapeTerminal(tt.in)
			if got != tt.want {
				t.Errorf("escapeTerminal(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if !safeForTerminal(got) {
				t.Errorf("escapeTerminal(%q) = %q: still holds a control or invisible character", tt.in, got)
			}
		})
	}
}

func TestEscapeBlock(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"lines indented", "one\ntwo\n\nfour", "one\n  two\n  \n  four"},
		{"tab kept", "a\tb", "a\tb"},
		{"CRLF", "one\r\ntwo", "one\\r\n  two"},
		{"escape sequence on its own line", "ok\n\x1b[1A\x1b[2Kfake line", "ok\n  \\x1b[1A\\x1b[2Kfake line"},
		{"bidi", "x\u202ey", `x\u202ey`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := escapeBlock(tt.in, "  "); got != tt.want {
				t.Errorf("escapeBlock(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// safeForTerminal reports whether s holds nothing but printable ASCII,
// line feeds, tabs and graphic non-ASCII characters that are not
// default-ignorable.
func safeForTerminal(s string) bool {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f || (r > 0x7f && hidden(r)) {
			return false
		}
		i += size
	}
	return true
}

func FuzzEscapeTerminal(f *testing.F) {
	for _, s := range []string{"", "\x1b[2J", "a\u202eb", "\xff", "ok\nline"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, got := range []string{escapeTerminal(s), escapeBlock(s, "  ")} {
			if !safeForTerminal(got) {
				t.Fatalf("escape(%q) = %q: unsafe", s, got)
			}
		}
		if strings.ContainsAny(escapeTerminal(s), "\n\t") {
			t.Fatalf("escapeTerminal(%q) is not one line", s)
		}
	})
}

func TestReviewShowsCanonicalArgs(t *testing.T) {
	// Members out of order, spellings JCS changes, and characters for the
	// terminal to escape: the review shows the canonical form, escaped.
	args := `{"z": 1.50, "a": "x\u001b[31my", "m": "\u202e\u0085", "n": 1e2}`
	p := proposal(t, "p-1", "write_file", args, "write")
	p.Reasoning = "first\n\x1b[2Jsecond\u202e\n"
	r := review{p: p, risk: p.Risk, cost: formatUSD(0.01234)}
	r.canon, r.err = canonicalArgs(p)
	if r.err != nil {
		t.Fatalf("canonicalArgs: %v", r.err)
	}
	if want := `{"a":"x\u001b[31my","m":"` + "\u202e\u0085" + `","n":100,"z":1.5}`; string(r.canon) != want {
		t.Errorf("canonicalArgs = %s, want %s", r.canon, want)
	}
	var out bytes.Buffer
	r.print(&out, time.Now())
	got := out.String()
	for _, want := range []string{
		"proposal p-1 (step 1)",
		"run:         run-p-1 (cost so far $0.0123)",
		"args_sha256: " + p.ArgsSHA256,
		"    {\n      \"a\": \"x\\u001b[31my\",\n      \"m\": \"\\u202e\\u0085\",\n      \"n\": 100,\n      \"z\": 1.5\n    }\n",
		"  reasoning:\n    first\n    \\x1b[2Jsecond\\u202e\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("review lacks %q:\n%s", want, got)
		}
	}
	if !safeForTerminal(got) {
		t.Errorf("review holds raw control or invisible characters:\n%q", got)
	}

	// The escaped arguments are still the JSON that was hashed.
	var shown, signed any
	start, end := strings.Index(got, "    {"), strings.Index(got, "    }\n")+len("    }")
	if err := json.Unmarshal([]byte(got[start:end]), &shown); err != nil {
		t.Fatalf("shown arguments are not JSON: %v", err)
	}
	if err := json.Unmarshal([]byte(args), &signed); err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, shown), mustJSON(t, signed); a != b {
		t.Errorf("shown arguments %s differ from the proposal's %s", a, b)
	}

	// A proposal that cannot be approved says so.
	p.ArgsSHA256 = strings.Repeat("0", 64)
	r = review{p: p, risk: p.Risk, cost: "$0.0000"}
	r.canon, r.err = canonicalArgs(p)
	out.Reset()
	r.print(&out, time.Now())
	if !strings.Contains(out.String(), "CANNOT BE APPROVED: args_sha256 mismatch") || !safeForTerminal(out.String()) {
		t.Errorf("review of a mismatched proposal:\n%s", out.String())
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPreview(t *testing.T) {
	for _, tt := range []struct {
		name, in, want string
	}{
		{"compacted", `{ "a" : [1, 2] }`, `{"a":[1,2]}`},
		{"cut", `"` + strings.Repeat("x", 300) + `"`, `"` + strings.Repeat("x", 199) + "…"},
		{"not JSON", "plain\x1b[2J text", `plain\x1b[2J text`},
		{"escapes", `"a` + "\u202e" + `b"`, `"a\u202eb"`},
	} {
		if got := preview([]byte(tt.in), 200); got != tt.want {
			t.Errorf("preview(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
