package deny

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDocsTableMatches keeps docs/DENY-CODES.md in step with the table.
func TestDocsTableMatches(t *testing.T) {
	doc, err := os.ReadFile("../../docs/DENY-CODES.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (\\d+) \\| (.*) \\|$")
	var got []string
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		got = append(got, m[1]+" "+m[2]+" "+m[3])
	}
	var want []string
	for _, e := range All() {
		want = append(want, fmt.Sprintf("%s %d %s", e.Code, e.Status, e.Meaning))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("docs/DENY-CODES.md differs from internal/deny; its rows should be:\n%s", strings.Join(func() []string {
			var rows []string
			for _, e := range All() {
				rows = append(rows, fmt.Sprintf("| `%s` | %d | %s |", e.Code, e.Status, e.Meaning))
			}
			return rows
		}(), "\n"))
	}
}

func TestTable(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range All() {
		switch {
		case seen[e.Code]:
			t.Errorf("code %s listed twice", e.Code)
		case e.Status < 400 || e.Status > 599:
			t.Errorf("code %s: status %d is not an error status", e.Code, e.Status)
		case e.Meaning == "" || strings.Contains(e.Meaning, "\n") || strings.Contains(e.Meaning, "|"):
			t.Errorf("code %s: meaning %q must be one line without |", e.Code, e.Meaning)
		}
		seen[e.Code] = true
		if got, ok := Lookup(e.Code); !ok || got != e || Status(e.Code) != e.Status {
			t.Errorf("Lookup/Status(%s) = %v %v %d", e.Code, got, ok, Status(e.Code))
		}
	}
	if Status("no_such_code") != 500 {
		t.Errorf("Status(unknown) = %d, want 500", Status("no_such_code"))
	}
}
