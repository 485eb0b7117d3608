// Package deploytest holds what the tests of deploy/ share: the m1_ metric
// names M1 registers, read from the module's source, and the check that a
// PromQL expression names only those (an alert or a dashboard panel on a
// misspelt metric stays silent or empty instead of failing); the rule for
// image tags; and the anchors GitHub gives a Markdown file's headings (the
// targets of the alerts' runbook links).
package deploytest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/prometheus/promql/parser"
)

// RegisteredMetrics returns the m1_ names in the module's non-test Go source
// that are passed as a metric's Name (or held by a Metric… constant that is). It fails t when the scan finds none of
// the names it must (the scan itself is then broken).
func RegisteredMetrics(t testing.TB) map[string]bool {
	t.Helper()
	root := moduleRoot(t)
	re := regexp.MustCompile(`Name:\s*"(m1_[a-z0-9_]+)"|^\s*"(m1_[a-z0-9_]+)",\s*$|^\s*Metric\w*\s*=\s*"(m1_[a-z0-9_]+)"\s*$`)
	known := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(src), "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				known[m[1]+m[2]+m[3]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"m1_policy_checks_total", "m1_audit_queue_depth", "m1_redis_connected", "m1_total_cost", "m1_build_info"} {
		if !known[must] {
			t.Fatalf("found no registration of %s in the source; the scan is broken (found %v)", must, known)
		}
	}
	return known
}

// UnknownMetrics returns the m1_ metrics expr selects that are not in known
// (a histogram's _bucket, _sum and _count series count as its name).
func UnknownMetrics(expr parser.Expr, known map[string]bool) []string {
	var unknown []string
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		vs, ok := node.(*parser.VectorSelector)
		if !ok || !strings.HasPrefix(vs.Name, "m1_") {
			return nil
		}
		name := vs.Name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && known[base] {
				name = base
			}
		}
		if !known[name] {
			unknown = append(unknown, vs.Name)
		}
		return nil
	})
	return unknown
}

var (
	releaseTag  = regexp.MustCompile(`:v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`)
	postgresTag = regexp.MustCompile(`^postgres:[0-9]+\.[0-9]+$`)
)

// PinnedImage reports whether image names an exact release: never latest,
// v1.36-latest, a bare major or minor, or no tag. PostgreSQL numbers its
// releases major.minor.
func PinnedImage(image string) bool {
	switch {
	case strings.Contains(image, "latest"):
		return false
	case strings.HasPrefix(image, "postgres:"):
		return postgresTag.MatchString(image)
	}
	return releaseTag.MatchString(image)
}

// MarkdownAnchors returns the anchors GitHub gives the headings of a
// Markdown document (ATX headings, `#` to `######`, outside fenced code
// blocks): the heading's text in lower case, with every character but
// letters, digits, spaces, hyphens and underscores removed and each space
// made a hyphen; a repeated anchor gets -1, -2, … in order.
func MarkdownAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	fence := ""
	for _, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		if f, ok := fenceOf(trimmed); ok && len(line)-len(trimmed) < 4 {
			switch {
			case fence == "":
				fence = f
			case strings.HasPrefix(f, fence) && strings.TrimSpace(strings.TrimLeft(trimmed, f[:1])) == "":
				fence = ""
			}
			continue
		}
		if fence != "" || len(line)-len(trimmed) >= 4 {
			continue
		}
		level := len(trimmed) - len(strings.TrimLeft(trimmed, "#"))
		if level < 1 || level > 6 || (len(trimmed) > level && trimmed[level] != ' ') {
			continue
		}
		text := strings.TrimSpace(trimmed[level:])
		text = strings.TrimSpace(strings.TrimRight(text, "#")) // closing sequence
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteRune('-')
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			seen[a]++
			a = a + "-" + strconv.Itoa(n)
		} else {
			seen[a] = 1
		}
		anchors[a] = true
	}
	return anchors
}

// fenceOf reports whether line opens or closes a fenced code block, and
// its fence (three or more backticks or tildes).
func fenceOf(line string) (string, bool) {
	for _, c := range []string{"`", "~"} {
		n := len(line) - len(strings.TrimLeft(line, c))
		if n >= 3 {
			return line[:n], true
		}
	}
	return "", false
}

// moduleRoot is the directory of the go.mod above the working directory.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}
