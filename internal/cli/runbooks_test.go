package cli

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// operatorDocs are the documents whose shell blocks an on-call engineer
// runs as written: every m1 command in them must exist with its flags.
var operatorDocs = []string{"../../docs/RUNBOOKS.md", "../../docs/DEPLOY.md"}

// TestRunbookCommandsExist extracts every m1 command line from the shell
// blocks of operatorDocs (also inside $(…), after pipes, after env
// assignments, and after the -- of kubectl exec) and runs its subcommand
// with -h: the subcommand must exist (exit 0, its usage printed) and every
// flag the line uses must appear in that usage. It does not run the
// commands themselves.
func TestRunbookCommandsExist(t *testing.T) {
	total := 0
	for _, path := range operatorDocs {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		cmds := m1Commands(string(raw))
		total += len(cmds)
		help := map[string]runResult{} // by subcommand words
		for _, c := range cmds {
			where := fmt.Sprintf("%s:%d: m1 %s", path[len("../../"):], c.line, strings.Join(c.args, " "))
			words, flags := splitCommand(c.args)
			if len(words) == 0 {
				continue // m1 -h, m1 --version
			}
			key := strings.Join(words, " ")
			r, ok := help[key]
			if !ok {
				r = m1Env(t, nil, append(slices.Clone(words), "-h")...)
				help[key] = r
			}
			if r.code != exitOK || !strings.HasPrefix(r.stdout, "Usage:\n  m1 "+words[0]) {
				t.Errorf("%s\n\tm1 %s -h: no such command (exit %d: %s)", where, key, r.code, firstLine(r.stderr))
				continue
			}
			for _, f := range flags {
				if !hasFlag(r.stdout, f) {
					t.Errorf("%s\n\tm1 %s has no flag --%s", where, key, f)
				}
			}
		}
	}
	if total < 20 {
		t.Errorf("found %d m1 commands in %v; the extraction is broken", total, operatorDocs)
	}
}

// hasFlag reports whether usage (printUsage's output) lists --name.
func hasFlag(usage, name string) bool {
	return strings.Contains(usage, "\n  --"+name+" ") || strings.Contains(usage, "\n  --"+name+"\n")
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// splitCommand splits the arguments after m1 into the words before the
// first flag (the subcommand, and any positional arguments, which -h
// ignores) and the names of the flags used (-h and --help left out).
func splitCommand(args []string) (words, flags []string) {
	i := 0
	for ; i < len(args) && !strings.HasPrefix(args[i], "-"); i++ {
		words = append(words, args[i])
	}
	for _, a := range args[i:] {
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name != "h" && name != "help" && !slices.Contains(flags, name) {
			flags = append(flags, name)
		}
	}
	return words, flags
}

// docCommand is one m1 command found in a document.
type docCommand struct {
	line int      // of the line it starts on
	args []string // after "m1"
}

var fenceOpen = regexp.MustCompile("^\\s*(```+|~~~+)\\s*(\\w*)")

// m1Commands returns the m1 commands of the shell code blocks (fences
// tagged sh, bash, shell or console) of a Markdown document. Lines ending
// in a backslash continue; here-documents are skipped.
func m1Commands(doc string) []docCommand {
	var out []docCommand
	lines := strings.Split(doc, "\n")
	fence, shell, heredoc := "", false, ""
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if fence == "" {
			if m := fenceOpen.FindStringSubmatch(line); m != nil {
				fence = m[1]
				shell = slices.Contains([]string{"sh", "bash", "shell", "console"}, m[2])
			}
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), fence) {
			fence = ""
			continue
		}
		if !shell {
			continue
		}
		if heredoc != "" {
			if strings.TrimSpace(line) == heredoc {
				heredoc = ""
			}
			continue
		}
		start := i + 1
		for strings.HasSuffix(line, "\\") && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, "\\") + " " + lines[i]
		}
		line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
		if m := heredocStart.FindStringSubmatch(line); m != nil {
			heredoc = m[1]
		}
		for _, words := range simpleCommands(line) {
			if args, ok := m1Args(words); ok {
				out = append(out, docCommand{start, args})
			}
		}
	}
	return out
}

var (
	heredocStart = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_]+)['"]?`)
	assignment   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

// m1Args returns the arguments of an m1 command: a simple command whose
// program, after variable assignments and sudo, env, exec, time, is m1, or
// that runs m1 after "--" (kubectl exec POD -- m1 …).
func m1Args(words []string) ([]string, bool) {
	for len(words) > 0 && (assignment.MatchString(words[0]) || slices.Contains([]string{"sudo", "env", "exec", "time"}, words[0])) {
		words = words[1:]
	}
	if len(words) > 0 && words[0] == "m1" {
		return words[1:], true
	}
	if i := slices.Index(words, "--"); i >= 0 && i+1 < len(words) && words[i+1] == "m1" {
		return words[i+2:], true
	}
	return nil, false
}

// simpleCommands splits a line of shell into its simple commands, each a
// list of words with quotes removed: split at | || && ; & ( ), with
// redirections and their targets dropped, stopped at a comment, and with
// the commands inside $(…) and `…` returned too (the substitution itself
// stands in its word as "$(…)"). It is the part of the shell grammar that
// documentation uses, not all of it.
func simpleCommands(line string) [][]string {
	var (
		cmds     [][]string
		words    []string
		word     strings.Builder
		inWord   bool
		redirect bool // the next word is a redirection's target
	)
	endWord := func() {
		if !inWord {
			return
		}
		if redirect {
			redirect = false
		} else {
			words = append(words, word.String())
		}
		word.Reset()
		inWord = false
	}
	endCommand := func() {
		endWord()
		if len(words) > 0 {
			cmds = append(cmds, words)
		}
		words = nil
	}
	// substitution reads $( … ) or ` … ` starting at i (at "$(" or "`"),
	// adds the commands inside to cmds and returns the index after it.
	substitution := func(rs []rune, i int) int {
		if rs[i] == '`' {
			j := i + 1
			for j < len(rs) && rs[j] != '`' {
				j++
			}
			cmds = append(cmds, simpleCommands(string(rs[i+1:min(j, len(rs))]))...)
			return j + 1
		}
		depth, j := 0, i+1
		var quote rune
		for ; j < len(rs); j++ {
			switch r := rs[j]; {
			case quote != 0:
				if r == quote {
					quote = 0
				}
			case r == '\'' || r == '"':
				quote = r
			case r == '(':
				depth++
			case r == ')':
				depth--
			}
			if depth == 0 {
				break
			}
		}
		cmds = append(cmds, simpleCommands(string(rs[i+2:min(j, len(rs))]))...)
		return j + 1
	}
	rs := []rune(line)
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case r == '\\' && i+1 < len(rs):
			word.WriteRune(rs[i+1])
			inWord = true
			i += 2
		case r == '\'':
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				j++
			}
			word.WriteString(string(rs[i+1 : min(j, len(rs))]))
			inWord = true
			i = j + 1
		case r == '"':
			inWord = true
			for i++; i < len(rs) && rs[i] != '"'; {
				switch {
				case rs[i] == '\\' && i+1 < len(rs):
					word.WriteRune(rs[i+1])
					i += 2
				case rs[i] == '$' && i+1 < len(rs) && rs[i+1] == '(', rs[i] == '`':
					i = substitution(rs, i)
					word.WriteString("$(…)")
				default:
					word.WriteRune(rs[i])
					i++
				}
			}
			i++
		case r == '$' && i+1 < len(rs) && rs[i+1] == '(', r == '`':
			i = substitution(rs, i)
			word.WriteString("$(…)")
			inWord = true
		case r == '#' && !inWord:
			endCommand()
			return cmds
		case r == ' ' || r == '\t':
			endWord()
			i++
		case strings.ContainsRune("|&;()", r):
			endCommand()
			i++
		case r == '>' || r == '<':
			if s := word.String(); inWord && strings.Trim(s, "0123456789") == "" {
				word.Reset() // 2>, 1>
				inWord = false
			}
			endWord()
			for i < len(rs) && strings.ContainsRune("<>&-0123456789", rs[i]) {
				i++
			}
			redirect = !strings.HasSuffix(string(rs[:i]), "&1") && !strings.HasSuffix(string(rs[:i]), "&2")
		default:
			word.WriteRune(r)
			inWord = true
			i++
		}
	}
	endCommand()
	return cmds
}

func TestSimpleCommands(t *testing.T) {
	tests := []struct {
		name string
		line string
		want [][]string
	}{
		{"plain", `m1 revoke --sub agent-42`, [][]string{{"m1", "revoke", "--sub", "agent-42"}}},
		{"quotes", `m1 check --args '{"path":"/etc/hosts"}' --token "$T"`, [][]string{{"m1", "check", "--args", `{"path":"/etc/hosts"}`, "--token", "$T"}}},
		{"comment", `m1 audit verify   # every chain`, [][]string{{"m1", "audit", "verify"}}},
		{"pipe and redirect", `m1 audit export --since 1h | gzip > out.gz 2>&1`, [][]string{{"m1", "audit", "export", "--since", "1h"}, {"gzip"}}},
		{"and", `git revert X && git push`, [][]string{{"git", "revert", "X"}, {"git", "push"}}},
		{"substitution", `TOKEN=$(m1 token mint --sub a --tool t)`, [][]string{{"m1", "token", "mint", "--sub", "a", "--tool", "t"}, {"TOKEN=$(…)"}}},
		{"quoted substitution", `export T="$(m1 grant --agent a)"`, [][]string{{"m1", "grant", "--agent", "a"}, {"export", "T=$(…)"}}},
		{"nested", `X=$(kubectl get secret s -o jsonpath='{.data.t}' | base64 -d)`, [][]string{{"kubectl", "get", "secret", "s", "-o", "jsonpath={.data.t}"}, {"base64", "-d"}, {"X=$(…)"}}},
		{"background", `kubectl port-forward pod 9192:9192 &`, [][]string{{"kubectl", "port-forward", "pod", "9192:9192"}}},
		{"hash inside a word", `curl localhost/#/x`, [][]string{{"curl", "localhost/#/x"}}},
	}
	for _, tt := range tests {
		if got := simpleCommands(tt.line); !slices.EqualFunc(got, tt.want, slices.Equal) {
			t.Errorf("simpleCommands(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestM1Commands(t *testing.T) {
	doc := "text m1 audit verify, not a command\n" +
		"```sh\n" +
		"m1 keys gen --kid k1 --out keys   # comment --nope\n" +
		"M1_DATA_DIR=/d m1 store restore \\\n  --from f.db\n" +
		"kubectl exec pod -c m1-authz -- m1 check --tool read_file\n" +
		"cat > x <<'EOF'\nm1 not --run\nEOF\n" +
		"bin/m1-authz --x\n" +
		"```\n" +
		"```yaml\nm1 yaml --no\n```\n" +
		"```promql\nm1_policy_checks_total\n```\n"
	var got []string
	for _, c := range m1Commands(doc) {
		got = append(got, fmt.Sprintf("%d:%s", c.line, strings.Join(c.args, " ")))
	}
	want := []string{"3:keys gen --kid k1 --out keys", "4:store restore --from f.db", "6:check --tool read_file"}
	if !slices.Equal(got, want) {
		t.Errorf("m1Commands = %q, want %q", got, want)
	}
	words, flags := splitCommand([]string{"audit", "verify", "--checkpoints", "DIR", "--json", "--db=x", "-h"})
	if !slices.Equal(words, []string{"audit", "verify"}) || !slices.Equal(flags, []string{"checkpoints", "json", "db"}) {
		t.Errorf("splitCommand = %q, %q", words, flags)
	}
}
