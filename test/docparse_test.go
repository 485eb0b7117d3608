package test

import (
	"slices"
	"strings"
	"testing"
)

// The doc runner's parts that need no process: annotations, commands,
// expected output, placeholders.
func TestDocParse(t *testing.T) {
	doc := strings.Join([]string{
		"# Title",
		"<!-- doc: background stop wait=127.0.0.1:9192 -->",
		"```sh",
		"m1-authz",
		"# => started",
		"```",
		"",
		"```sh",
		"# a comment",
		"TOKEN=$(m1 token mint \\",
		"  --tool x)",
		"m1 check --token \"$TOKEN\"   # trailing",
		"# => decision: allow",
		"# => status: 200",
		"cat <<'EOF'",
		"# not a comment",
		"",
		"EOF",
		"```",
		"<!-- doc: skip Kubernetes: no cluster here -->",
		"   ```sh",
		"   kubectl get pods",
		"   ```",
		"<!-- doc: sqlite3 data/m1.db psql \"$READER_URL\" -->",
		"```sql",
		"SELECT 1;",
		"```",
		"```json",
		"{}",
		"```",
	}, "\n")
	blocks, err := parseDocBlocks(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 5 {
		t.Fatalf("parseDocBlocks: %d blocks, want 5", len(blocks))
	}
	bg, run, skip, sql, js := blocks[0], blocks[1], blocks[2], blocks[3], blocks[4]
	if bg.note.mode != "background" || !bg.note.stop || bg.note.wait != "127.0.0.1:9192" || !slices.Equal(docWants(bg.lines), []string{"started"}) {
		t.Errorf("background block: %+v", bg)
	}
	if skip.note.mode != "skip" || skip.note.reason != "Kubernetes: no cluster here" || skip.lines[0] != "kubectl get pods" || skip.runs() {
		t.Errorf("skipped block: %+v", skip)
	}
	if sql.note.mode != "sql" || sql.note.sqlite != "data/m1.db" || sql.note.psql != `"$READER_URL"` || !slices.Equal(sql.note.needs, []string{"postgres"}) || !sql.runs() || sql.check() != nil {
		t.Errorf("sql block: %+v (check: %v)", sql, sql.check())
	}
	if js.runs() {
		t.Errorf("json block runs: %+v", js)
	}
	cmds, err := splitCommands(run.lines, run.line+1)
	if err != nil {
		t.Fatal(err)
	}
	want := []docCommand{
		{line: 10, text: "TOKEN=$(m1 token mint \\\n  --tool x)"},
		{line: 12, text: "m1 check --token \"$TOKEN\"   # trailing", want: []string{"decision: allow", "status: 200"}},
		{line: 15, text: "cat <<'EOF'\n# not a comment\n\nEOF"},
	}
	if len(cmds) != len(want) {
		t.Fatalf("splitCommands = %+v, want %+v", cmds, want)
	}
	for i := range want {
		if cmds[i].line != want[i].line || cmds[i].text != want[i].text || !slices.Equal(cmds[i].want, want[i].want) {
			t.Errorf("command %d = %+v, want %+v", i, cmds[i], want[i])
		}
	}

	for _, bad := range []string{"doc: skip", "doc: needs mysql", "doc: frobnicate", "doc: sqlite3"} {
		if _, err := parseDocNote(strings.TrimPrefix(bad, "doc:")); err == nil {
			t.Errorf("parseDocNote(%q) accepted", bad)
		}
	}
	if _, err := splitCommands([]string{"", "# => orphan"}, 1); err == nil {
		t.Error("splitCommands accepted a # => line under no command")
	}
	if _, err := splitCommands([]string{"echo 'open"}, 1); err == nil {
		t.Error("splitCommands accepted a command that never ends")
	}

	for text, want := range map[string]string{
		`m1 revoke --jti 7f3c…`:              "…",
		`m1 approve <id>`:                    "<id>",
		`m1 check --args '{}'  # ids: …`:     "",
		`cat <<'EOF' > x.sql`:                "",
		`curl -s localhost:9192/health 2>&1`: "",
	} {
		if got := placeholder(text); got != want {
			t.Errorf("placeholder(%q) = %q, want %q", text, got, want)
		}
	}

	out := "decision:     deny\nstatus:       401\nbody: {\"error\":\"policy_denied\",\"decision_id\":\"01a2\"}\n"
	for _, c := range []struct {
		want []string
		miss string
	}{
		{[]string{"decision: deny", "status: 401"}, ""},
		{[]string{`body: {"error":"policy_denied",…}`}, ""},
		{[]string{"status: 401", "decision: deny"}, "decision: deny"}, // in order
		{[]string{"status: 403"}, "status: 403"},
	} {
		if got := matchOutput(out, c.want); got != c.miss {
			t.Errorf("matchOutput(%q) misses %q, want %q", c.want, got, c.miss)
		}
	}
}
