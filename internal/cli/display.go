package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/m1-agent/m1/internal/store"
)

// escapeTerminal returns s as one line that is safe to write to a
// terminal: every character that a terminal would interpret, or that a
// reader could not see, is replaced by a visible Go-style escape, so that
// text from an agent or a planner is shown exactly, never acted on, and
// cannot hide or reorder what is around it (trojan source). Escaped are:
//
//   - C0 controls and DEL: \n, \r, \t, else \xNN (ESC is \x1b, so an ANSI
//     escape sequence shows as \x1b[2J);
//   - C1 controls, U+0080 to U+009F: \u0085, \u009b;
//   - format characters (category Cf), among them the bidi controls U+061C,
//     U+200E, U+200F, U+202A to U+202E and U+2066 to U+2069, zero-width
//     spaces and joiners, U+FEFF and the tag characters: \u202e, \U000e0041;
//   - every other character that is not graphic (line and paragraph
//     separators, private use, surrogates, unassigned code points), spaces
//     other than U+0020 (U+00A0, U+3000, …), variation selectors and the
//     other default-ignorable code points (Hangul fillers, U+034F);
//   - bytes that are not UTF-8: \xNN.
//
// A backslash is not doubled: the text is for reading, and in arguments,
// shown as JSON, a backslash of the value is already \\.
func escapeTerminal(s string) string {
	return escapeText(s, "", false)
}

// escapeBlock is escapeTerminal for a block of text (a planner's
// reasoning, indented JSON): line feeds and tabs are kept, and every line
// after a line feed starts with indent. A carriage return is still \r: it
// would let a line overwrite itself.
func escapeBlock(s, indent string) string {
	return escapeText(s, indent, true)
}

func escapeText(s, indent string, block bool) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && block:
			b.WriteByte('\n')
			b.WriteString(indent)
		case r == '\t' && block:
			b.WriteByte('\t')
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case hidden(r) && r > 0xffff:
			fmt.Fprintf(&b, `\U%08x`, r)
		case hidden(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// hidden reports whether r is a character escapeTerminal escapes: not
// graphic (Cc, Cf, Co, Cs, Zl, Zp, unassigned), a space other than U+0020,
// or default-ignorable (variation selectors, Hangul fillers, …).
func hidden(r rune) bool {
	switch {
	case r == ' ':
		return false
	case !unicode.IsGraphic(r), unicode.Is(unicode.Zs, r):
		return true
	}
	return unicode.In(r, unicode.Variation_Selector, unicode.Other_Default_Ignorable_Code_Point)
}

// canonicalArgs checks a proposal's arguments as the sidecar will (see
// argsSHA256) and against the proposal's args_sha256, and returns their
// RFC 8785 (JCS) form: the exact bytes whose SHA-256 an approval binds.
// The error says why the proposal must not be approved: arguments the
// sidecar would refuse, or a hash that is not theirs.
func canonicalArgs(p store.Proposal) ([]byte, error) {
	sum, err := argsSHA256(p.Tool, p.Args)
	if err != nil {
		return nil, err
	}
	if sum != p.ArgsSHA256 {
		return nil, fmt.Errorf("args_sha256 mismatch: the orchestrator says %s, the arguments hash to %s", p.ArgsSHA256, sum)
	}
	args := []byte(p.Args)
	if len(bytes.TrimSpace(args)) == 0 {
		args = []byte("{}") // as argsSHA256 takes them
	}
	canon := jsontext.Value(bytes.Clone(args))
	if err := canon.Canonicalize(); err != nil {
		return nil, fmt.Errorf("canonicalize the arguments: %w", err)
	}
	// What is shown must be what is hashed; argsSHA256 is the sidecar's
	// own computation, so this only fails if the two ever part ways.
	if got := sha256.Sum256(canon); hex.EncodeToString(got[:]) != sum {
		return nil, fmt.Errorf("the canonical arguments hash to %x, not %s", got, sum)
	}
	return canon, nil
}

// prettyJSON indents JSON for reading without changing a token of it:
// json.Indent only adds white space between tokens, so strings and numbers
// stay byte for byte the canonical ones.
func prettyJSON(canon []byte) string {
	var out bytes.Buffer
	if err := json.Indent(&out, canon, "", "  "); err != nil {
		return string(canon)
	}
	return out.String()
}

// formatUSD is a cost as $0.0123.
func formatUSD(usd float64) string {
	return fmt.Sprintf("$%.4f", usd)
}

// preview is a short one-line form of a tool's JSON result: compacted,
// at most n characters (then …), escaped.
func preview(raw []byte, n int) string {
	var out bytes.Buffer
	if json.Compact(&out, raw) != nil {
		out.Reset()
		out.Write(bytes.TrimSpace(raw))
	}
	s := out.String()
	if utf8.RuneCountInString(s) > n {
		s = string([]rune(s)[:n]) + "…"
	}
	return escapeTerminal(s)
}

// review is what m1 approve shows of a proposal before asking for a
// decision.
type review struct {
	p     store.Proposal
	risk  string // the tool's risk in the operator's registry ("" if unknown)
	canon []byte // nil when the proposal cannot be approved
	err   error  // why it cannot
	cost  string // the run's cost so far, or why it is unknown
}

// print writes the review. Everything that came from the agent, the
// planner or the orchestrator is escaped (escapeTerminal).
func (r *review) print(w io.Writer, now time.Time) {
	p := r.p
	const indent = "    "
	if p.Origin == store.OriginSidecar {
		printOrigin(w, p)
	} else {
		fmt.Fprintf(w, "\nproposal %s (step %d)\n", escapeTerminal(p.ID), p.Step)
		fmt.Fprintf(w, "  %-12s %s (cost so far %s)\n", "run:", escapeTerminal(p.RunID), r.cost)
		fmt.Fprintf(w, "  %-12s %s\n", "agent:", escapeTerminal(p.Agent))
	}
	fmt.Fprintf(w, "  %-12s %s\n", "tool:", escapeTerminal(p.Tool))
	fmt.Fprintf(w, "  %-12s %s\n", "risk:", escapeTerminal(p.Risk))
	if r.risk != p.Risk {
		fmt.Fprintf(w, "  WARNING: the tool registry says risk %q; the orchestrator says %q\n", escapeTerminal(r.risk), escapeTerminal(p.Risk))
	}
	exp := p.ExpiresAt.UTC().Format(time.RFC3339)
	fmt.Fprintf(w, "  %-12s %s%s\n", "expires:", exp, relative(exp, now))
	if r.err != nil {
		fmt.Fprintf(w, "  %-12s %s\n", "args_sha256:", escapeTerminal(p.ArgsSHA256))
		fmt.Fprintf(w, "  CANNOT BE APPROVED: %s\n", escapeTerminal(r.err.Error()))
		fmt.Fprintf(w, "  arguments as proposed (not canonical):\n%s%s\n", indent, escapeBlock(string(p.Args), indent))
	} else {
		fmt.Fprintf(w, "  %-12s %s (the SHA-256 of the arguments below)\n", "args_sha256:", escapeTerminal(p.ArgsSHA256))
		fmt.Fprintf(w, "  arguments (RFC 8785 canonical form, as hashed and signed):\n%s%s\n", indent, escapeBlock(prettyJSON(r.canon), indent))
	}
	if p.Origin == store.OriginSidecar {
		fmt.Fprintln(w)
		return // no planner, no reasoning
	}
	reasoning := strings.TrimRight(p.Reasoning, "\n")
	if reasoning == "" {
		reasoning = "(none)"
	}
	fmt.Fprintf(w, "  reasoning:\n%s%s\n\n", indent, escapeBlock(reasoning, indent))
}

// printOrigin writes the head of the review of a sidecar's proposal
// (DESIGN §10): which sidecar and pod filed it, for which principal, and
// the decision that denied the call. All escaped.
func printOrigin(w io.Writer, p store.Proposal) {
	fmt.Fprintf(w, "\nproposal %s (filed by a sidecar for an MCP client's call; approved, it is held for the client's retry)\n", escapeTerminal(p.ID))
	from := "sidecar " + escapeTerminal(cmpOr(p.Sidecar, "(unnamed)"))
	if p.Pod != "" {
		from += ", pod " + escapeTerminal(p.Pod)
	}
	fmt.Fprintf(w, "  %-12s %s\n", "from:", from)
	fmt.Fprintf(w, "  %-12s %s\n", "principal:", escapeTerminal(p.Agent))
	if p.DecisionID != "" {
		fmt.Fprintf(w, "  %-12s %s (the deny that filed it, in the sidecar's audit trail)\n", "decision:", escapeTerminal(p.DecisionID))
	}
	fmt.Fprintf(w, "  %-12s %s\n", "filed:", p.CreatedAt.UTC().Format(time.RFC3339))
}
