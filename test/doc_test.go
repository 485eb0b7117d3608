package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/testenv"
)

// TestDocs runs the shell blocks of README.md and docs/*.md as a reader
// would: each file's blocks in order, in one bash session (variables and
// the working directory carry from block to block), in a new directory
// holding bin/ (the binaries TestMain built) and copies of the
// repository's policies/, testdata/, scripts/ and deploy/. `make` is a
// shim: `make build` does nothing (bin/ is built), `make run` runs
// bin/m1-authz, `make demo` runs scripts/demo.sh; any other target fails.
// The files run one after another (their ports are fixed: docPorts), each
// within docFileTimeout.
//
// A block runs unless the line just above its fence says otherwise, in an
// HTML comment that Markdown does not show:
//
//	<!-- doc: run -->                 the default: every command must exit 0
//	<!-- doc: background wait=127.0.0.1:9192 -->
//	                                  a server: started in the background, ready
//	                                  when wait= (host:port, or a URL that
//	                                  answers) and its `# =>` lines are met;
//	                                  stopped at the end of the file
//	<!-- doc: background stop … -->   stops the file's earlier servers first,
//	                                  as the text tells the reader to
//	<!-- doc: needs redis -->         a new redis-server on 127.0.0.1:6379 (with
//	                                  an aclfile), REDIS_URL exported
//	<!-- doc: needs postgres -->      a new PostgreSQL server: PGHOST and PGPORT
//	                                  exported, and PG_ADMIN_URL, its superuser's URL
//	<!-- doc: needs m1-authz -->      m1-authz running on its default ports
//	                                  (M1_ADMIN_TOKEN exported, ./data an hour old)
//	<!-- doc: skip REASON -->         not run here (Kubernetes, Docker, a
//	                                  production host, a benchmark …)
//	<!-- doc: illustrative -->        not commands: output, pseudo-code
//	<!-- doc: sqlite3 FILE psql CONN -->
//	                                  (a sql block) run with sqlite3 -readonly
//	                                  FILE, and/or psql CONN (a shell word:
//	                                  "$READER_URL"; implies needs postgres)
//
// Words combine (`<!-- doc: background needs redis wait=… -->`). In a
// runnable block, `# => TEXT` lines right under a command are its
// expected output: each TEXT must appear in a line of the output, in
// order (runs of white space compare equal, `…` stands for any text), and
// the command may then exit non-zero (m1 check exits 1 on a deny).
// Placeholders (`…`, `<id>`) in a runnable command fail the test: write
// the value, or mark the block.
func TestDocs(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash not installed")
	}
	for _, tool := range []string{"curl", "jq", "sqlite3", "openssl"} {
		testenv.RequireBinary(t, tool, "apt-get install -y curl jq sqlite3 openssl (make test does this when it can)")
	}
	files, _ := filepath.Glob("../docs/*.md")
	files = append([]string{"../README.md"}, files...)
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".md")
		t.Run(name, func(t *testing.T) { runDocFile(t, f) })
	}
}

const (
	docFileTimeout    = 4 * time.Minute // one file's blocks, servers included
	docCommandTimeout = 2 * time.Minute // one command
	docReadyTimeout   = time.Minute     // a server's wait= and # => lines (a new state epoch is 30s)
	docStopTimeout    = 20 * time.Second
	docRedisPort      = 6379
)

// docPorts are the fixed ports the docs use; a file starts only once they
// are free. (make demo has its own, from 19191, and checks them itself.)
var docPorts = []int{9191, 9192, 9193, 10000, 3000, docRedisPort}

// docBlock is one fenced block of a Markdown file.
type docBlock struct {
	line  int // of the opening fence
	lang  string
	lines []string // the content, the fence's indentation removed
	note  docNote
}

// docNote is a block's annotation.
type docNote struct {
	mode   string // run, background, skip, illustrative, sql
	reason string // skip, illustrative
	needs  []string
	wait   string // background
	stop   bool
	sqlite string // sql: the database file for sqlite3
	psql   string // sql: the connection for psql, a shell word
	set    bool   // written in the document (else the default)
}

var (
	docFence  = regexp.MustCompile("^(\\s*)(```+|~~~+)\\s*([\\w+-]*)\\s*$")
	docNoteRE = regexp.MustCompile(`^\s*<!--\s*doc:(.*?)-->\s*$`)
)

func isShell(lang string) bool {
	return slices.Contains([]string{"sh", "bash", "shell", "console"}, lang)
}

// parseDocBlocks returns the fenced blocks of a Markdown document with
// their annotations.
func parseDocBlocks(doc string) ([]docBlock, error) {
	lines := strings.Split(doc, "\n")
	var out []docBlock
	for i := 0; i < len(lines); i++ {
		m := docFence.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		b := docBlock{line: i + 1, lang: m[3], note: docNote{mode: "run"}}
		indent, fence := m[1], m[2]
		if i > 0 {
			if nm := docNoteRE.FindStringSubmatch(lines[i-1]); nm != nil {
				n, err := parseDocNote(nm[1])
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", i, err)
				}
				b.note = n
			}
		}
		closed := false
		for i++; i < len(lines); i++ {
			if strings.HasPrefix(strings.TrimSpace(lines[i]), fence) && strings.Trim(strings.TrimSpace(lines[i]), fence[:1]) == "" {
				closed = true
				break
			}
			b.lines = append(b.lines, strings.TrimPrefix(lines[i], indent))
		}
		if !closed {
			return nil, fmt.Errorf("line %d: the block never closes", b.line)
		}
		out = append(out, b)
	}
	return out, nil
}

// parseDocNote parses the words of a <!-- doc: … --> comment.
func parseDocNote(s string) (docNote, error) {
	n := docNote{mode: "run", set: true}
	words := strings.Fields(s)
	if len(words) == 0 {
		return n, errors.New("empty doc annotation")
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w == "run" || w == "background":
			n.mode = w
		case w == "skip" || w == "illustrative":
			n.mode, n.reason = w, strings.Join(words[i+1:], " ")
			if w == "skip" && n.reason == "" {
				return n, errors.New("doc: skip needs a reason")
			}
			i = len(words)
		case w == "sqlite3" || w == "psql":
			if i+1 == len(words) {
				return n, fmt.Errorf("doc: %s needs the database (a file, a connection)", w)
			}
			n.mode = "sql"
			if w == "sqlite3" {
				n.sqlite = words[i+1]
			} else {
				n.psql = words[i+1]
				n.needs = append(n.needs, "postgres")
			}
			i++
		case w == "needs":
			if i+1 == len(words) || !slices.Contains([]string{"redis", "postgres", "m1-authz"}, words[i+1]) {
				return n, errors.New("doc: needs takes redis, postgres or m1-authz")
			}
			n.needs = append(n.needs, words[i+1])
			i++
		case w == "stop":
			n.stop = true
		case strings.HasPrefix(w, "wait="):
			n.wait = strings.TrimPrefix(w, "wait=")
		default:
			return n, fmt.Errorf("doc: unknown word %q", w)
		}
	}
	return n, nil
}

// check reports a block whose annotation does not fit it.
func (b docBlock) check() error {
	switch {
	case b.note.mode == "skip" || b.note.mode == "illustrative":
		return nil
	case !isShell(b.lang) && !b.note.set:
		return nil // output, configuration, Go, Rego …: not run
	case b.lang == "sql":
		if b.note.mode != "sql" {
			return fmt.Errorf("a sql block runs only with doc: sqlite3 FILE or doc: psql CONN")
		}
	case !isShell(b.lang):
		return fmt.Errorf("a %q block cannot be run (doc: %s)", b.lang, b.note.mode)
	case b.note.mode == "sql":
		return errors.New("doc: sqlite3 and psql are for sql blocks")
	case b.note.mode == "background" && b.note.wait == "" && len(docWants(b.lines)) == 0:
		return errors.New("doc: background needs wait= or # => lines to know the server is ready")
	}
	return nil
}

// runs reports whether the test runs the block.
func (b docBlock) runs() bool {
	if b.note.mode == "skip" || b.note.mode == "illustrative" {
		return false
	}
	return isShell(b.lang) || b.lang == "sql" && b.note.mode == "sql"
}

// docCommand is one complete command of a block (several lines when it
// continues, holds a here-document or a compound command).
type docCommand struct {
	line int // of its first line in the file
	text string
	want []string // the # => lines under it
}

const docWantPrefix = "# =>"

// docWants returns the # => lines of a block.
func docWants(lines []string) []string {
	var out []string
	for _, l := range lines {
		if w, ok := strings.CutPrefix(strings.TrimSpace(l), docWantPrefix); ok {
			out = append(out, strings.TrimSpace(w))
		}
	}
	return out
}

// splitCommands cuts a block into complete commands, asking bash (-n)
// where one ends. Lines that are only comments or blank between commands
// belong to none.
func splitCommands(lines []string, firstLine int) ([]docCommand, error) {
	var out []docCommand
	var cur []string
	start, prevEnd := 0, -2 // prevEnd: the last line of the last command or of its # => lines
	for i, l := range lines {
		trim := strings.TrimSpace(l)
		if len(cur) == 0 {
			if w, ok := strings.CutPrefix(trim, docWantPrefix); ok {
				if len(out) == 0 || prevEnd != i-1 {
					return nil, fmt.Errorf("line %d: a %s line must follow the command it is the output of", firstLine+i, docWantPrefix)
				}
				out[len(out)-1].want = append(out[len(out)-1].want, strings.TrimSpace(w))
				prevEnd = i
				continue
			}
			if trim == "" || strings.HasPrefix(trim, "#") {
				continue
			}
			start = i
		}
		cur = append(cur, l)
		text := strings.Join(cur, "\n")
		if strings.HasSuffix(trim, "\\") || !bashComplete(text) {
			continue
		}
		out = append(out, docCommand{line: firstLine + start, text: text})
		cur, prevEnd = nil, i
	}
	if len(cur) > 0 {
		return nil, fmt.Errorf("line %d: the command does not end (bash -n: %s)", firstLine+start, bashSyntax(strings.Join(cur, "\n")))
	}
	return out, nil
}

// bashComplete reports whether text is one or more complete commands: bash
// -n accepts it without a word (an open here-document only warns).
func bashComplete(text string) bool {
	return bashSyntax(text) == ""
}

func bashSyntax(text string) string {
	var stderr bytes.Buffer
	cmd := exec.Command("bash", "--noprofile", "--norc", "-n")
	cmd.Stdin, cmd.Stderr = strings.NewReader(text+"\n"), &stderr
	if err := cmd.Run(); err != nil && stderr.Len() == 0 {
		return err.Error()
	}
	return strings.TrimSpace(stderr.String())
}

// docPlaceholder finds what a reader would have to replace: an ellipsis or
// an <angle-bracketed name>, outside comments.
var docPlaceholder = regexp.MustCompile(`…|<[A-Za-z][A-Za-z0-9_ -]*>`)

func placeholder(text string) string {
	for _, l := range strings.Split(text, "\n") {
		if m := docPlaceholder.FindString(stripComment(l)); m != "" {
			return m
		}
	}
	return ""
}

// stripComment cuts a shell comment off a line: a # at the start of a word,
// outside quotes.
func stripComment(l string) string {
	var q rune
	prev := ' '
	for i, r := range l {
		switch {
		case q != 0:
			if r == q {
				q = 0
			}
		case r == '\'' || r == '"':
			q = r
		case r == '#' && (prev == ' ' || prev == '\t'):
			return l[:i]
		}
		prev = r
	}
	return l
}

// matchOutput reports the first wanted line that out does not show, in
// order; "" when all are there.
func matchOutput(out string, want []string) string {
	lines := strings.Split(out, "\n")
	i := 0
	for _, w := range want {
		parts := strings.Split(strings.Join(strings.Fields(w), " "), "…")
		found := false
		for ; i < len(lines) && !found; i++ {
			found = matchParts(strings.Join(strings.Fields(lines[i]), " "), parts)
		}
		if !found {
			return w
		}
	}
	return ""
}

// matchParts reports whether line holds the parts in order.
func matchParts(line string, parts []string) bool {
	for _, p := range parts {
		p = strings.TrimSpace(p)
		j := strings.Index(line, p)
		if j < 0 {
			return false
		}
		line = line[j+len(p):]
	}
	return true
}

// runDocFile runs one Markdown file's blocks.
func runDocFile(t *testing.T, path string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rel := strings.TrimPrefix(path, "../")
	blocks, err := parseDocBlocks(string(raw))
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	// Everything about the blocks that can be checked without running them.
	type planned struct {
		b    docBlock
		cmds []docCommand
	}
	var plan []planned
	for _, b := range blocks {
		where := fmt.Sprintf("%s:%d", rel, b.line)
		if err := b.check(); err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if !b.runs() {
			continue
		}
		p := planned{b: b}
		if isShell(b.lang) && b.note.mode == "run" {
			if p.cmds, err = splitCommands(b.lines, b.line+1); err != nil {
				t.Errorf("%s: %v", rel, err)
				continue
			}
		}
		text := strings.Join(b.lines, "\n")
		if b.note.mode == "background" {
			text = strings.Join(slices.DeleteFunc(slices.Clone(b.lines), func(l string) bool {
				return strings.HasPrefix(strings.TrimSpace(l), docWantPrefix)
			}), "\n")
		}
		if ph := placeholder(text); ph != "" {
			t.Errorf("%s: placeholder %q in a block that runs: write a value a reader can run, or mark the block <!-- doc: illustrative --> or <!-- doc: skip REASON -->", where, ph)
			continue
		}
		plan = append(plan, p)
	}
	if t.Failed() || len(plan) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), docFileTimeout)
	defer cancel()
	s := newDocSession(t, ctx)
	defer s.close()
	for _, p := range plan {
		where := fmt.Sprintf("%s:%d", rel, p.b.line)
		start := time.Now()
		for _, n := range p.b.note.needs {
			s.need(n, where)
		}
		if p.b.note.stop {
			s.stopBackground()
		}
		switch p.b.note.mode {
		case "background":
			s.background(where, p.b)
		case "sql":
			sql := strings.Join(p.b.lines, "\n")
			if p.b.note.sqlite != "" {
				s.run(where+" (sqlite3)", fmt.Sprintf("sqlite3 -readonly -bail %s <<'__DOC_SQL__'\n%s\n__DOC_SQL__", p.b.note.sqlite, sql), nil)
			}
			if p.b.note.psql != "" {
				s.run(where+" (psql)", fmt.Sprintf("psql -X -q -v ON_ERROR_STOP=1 %s <<'__DOC_SQL__'\n%s\n__DOC_SQL__", p.b.note.psql, sql), nil)
			}
		default:
			for _, c := range p.cmds {
				s.run(fmt.Sprintf("%s:%d", rel, c.line), c.text, c.want)
			}
		}
		t.Logf("%s (%s): %v", where, p.b.note.mode, time.Since(start).Round(time.Millisecond))
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// docSession is one bash process that runs a file's commands, fed on its
// stdin one command at a time.
type docSession struct {
	t     *testing.T
	ctx   context.Context
	dir   string // the reader's working directory
	meta  string // the commands' output files
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan [2]int // command number, exit status (or pid)
	log   testenv.Buffer
	n     int
	busy  bool // a command did not end: the shell is not listening
	bgs   []*docServer
	have  map[string]bool
}

// docServer is a background block: a process group of its own.
type docServer struct {
	where  string
	pgid   int
	log    string
	dumped bool
}

func newDocSession(t *testing.T, ctx context.Context) *docSession {
	t.Helper()
	for _, p := range docPorts {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		testenv.Eventually(t, 20*time.Second, "port "+addr+" free for the docs (another process listens there)", func() bool {
			c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err != nil
		})
	}
	s := &docSession{t: t, ctx: ctx, dir: t.TempDir(), meta: t.TempDir(), done: make(chan [2]int, 1), have: map[string]bool{}}
	for _, d := range []string{"policies", "testdata", "scripts", "deploy"} {
		if err := os.CopyFS(filepath.Join(s.dir, d), os.DirFS(filepath.Join("..", d))); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(s.dir, "bin")
	shims := filepath.Join(s.meta, "shims")
	for _, d := range []string{bin, shims, filepath.Join(s.meta, "home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{binPath, cliPath, orchPath, toolPath} {
		if err := os.Symlink(b, filepath.Join(bin, filepath.Base(b))); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(shims, "make"), []byte(makeShim), 0o755); err != nil {
		t.Fatal(err)
	}
	user := os.Getenv("USER")
	if user == "" {
		user = "operator"
	}
	s.cmd = exec.Command("bash", "--noprofile", "--norc")
	s.cmd.Dir = s.dir
	s.cmd.Env = []string{
		"PATH=" + bin + string(os.PathListSeparator) + shims + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + filepath.Join(s.meta, "home"), "USER=" + user, "LANG=C.UTF-8", "TERM=dumb",
		"TMPDIR=" + os.TempDir(),
	}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s.cmd.Stderr = &s.log
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 3 && f[0] == "__DOC_DONE__" {
				n, _ := strconv.Atoi(f[1])
				v, _ := strconv.Atoi(f[2])
				s.done <- [2]int{n, v}
				continue
			}
			fmt.Fprintln(&s.log, sc.Text())
		}
		close(s.done)
	}()
	return s
}

// makeShim stands in for make in the docs' directory: the binaries are
// built already.
const makeShim = `#!/usr/bin/env bash
# make, as TestDocs runs it: bin/ holds the binaries the test built.
case "$*" in
  build) echo "make build: bin/ is built (TestDocs)" ;;
  run) exec bin/m1-authz ;;
  demo) exec ./scripts/demo.sh ;;
  *) echo "make $*: not run by TestDocs; mark the block <!-- doc: skip REASON -->" >&2; exit 2 ;;
esac
`

// send writes one command to the session and waits for its end; it
// returns the status (or, for a background start, the pid) and whether it
// ended in time.
func (s *docSession) send(script string, timeout time.Duration) (int, bool) {
	s.n++
	n := s.n
	full := fmt.Sprintf("%s\nprintf '\\n__DOC_DONE__ %d %%d\\n' \"$__doc_rc\"\n", strings.ReplaceAll(script, "@N@", strconv.Itoa(n)), n)
	if _, err := io.WriteString(s.stdin, full); err != nil {
		s.t.Fatalf("the shell is gone: %v\n%s", err, s.log.String())
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case d, ok := <-s.done:
			if !ok {
				return -1, false
			}
			if d[0] == n {
				return d[1], true
			}
		case <-timer.C:
			s.busy = true
			return -1, false
		case <-s.ctx.Done():
			s.busy = true
			return -1, false
		}
	}
}

// run runs one command and checks it: exit 0, or its # => lines.
func (s *docSession) run(where, text string, want []string) {
	t := s.t
	if t.Failed() {
		return // the next commands depend on this one; its failure is the news
	}
	out := filepath.Join(s.meta, fmt.Sprintf("%d.out", s.n+1))
	script := fmt.Sprintf("{\n%s\n} >'%s' 2>&1 </dev/null; __doc_rc=$?", text, out)
	rc, ok := s.send(script, docCommandTimeout)
	got, _ := os.ReadFile(out)
	switch {
	case !ok && rc == -1 && s.ctx.Err() != nil:
		t.Errorf("%s: the file's blocks did not finish within %v\n$ %s\n%s", where, docFileTimeout, text, got)
	case !ok:
		t.Errorf("%s: did not finish within %v (a server? mark the block <!-- doc: background wait=… -->)\n$ %s\n%s%s", where, docCommandTimeout, text, got, s.log.String())
	case bytes.Contains(got, []byte("WARNING: DATA RACE")):
		t.Errorf("%s: a data race\n%s", where, got)
	case len(want) > 0:
		if miss := matchOutput(string(got), want); miss != "" {
			t.Errorf("%s: the output lacks %q (exit %d)\n$ %s\n%s", where, miss, rc, text, got)
		}
	case rc != 0:
		t.Errorf("%s: exit %d\n$ %s\n%s", where, rc, text, got)
	}
	if t.Failed() {
		s.dumpServers()
	}
}

// background starts a block in a process group of its own and waits until
// it is ready.
func (s *docSession) background(where string, b docBlock) {
	t := s.t
	if t.Failed() {
		return
	}
	text := strings.Join(b.lines, "\n")
	log := filepath.Join(s.meta, fmt.Sprintf("server-%d.log", s.n+1))
	script := fmt.Sprintf("set -m\n(\n%s\n) >'%s' 2>&1 </dev/null &\n__doc_rc=$!\nset +m", text, log)
	pid, ok := s.send(script, 10*time.Second)
	if !ok {
		t.Fatalf("%s: could not start the block in the background\n%s", where, s.log.String())
	}
	srv := &docServer{where: where, pgid: pid, log: log}
	s.bgs = append(s.bgs, srv)
	want := docWants(b.lines)
	deadline := time.Now().Add(docReadyTimeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 250*time.Millisecond) {
		got, _ := os.ReadFile(log)
		if matchOutput(string(got), want) == "" && docReady(b.note.wait) {
			return
		}
		if !groupAlive(srv.pgid) {
			t.Fatalf("%s: the server exited\n%s\n%s", where, text, got)
		}
		if time.Now().After(deadline) || s.ctx.Err() != nil {
			t.Fatalf("%s: not ready within %v (wait=%s, output lacks %q)\n%s\n%s", where, docReadyTimeout, b.note.wait, matchOutput(string(got), want), text, got)
		}
		time.Sleep(wait)
	}
}

// docReady reports whether a wait= target answers: a TCP connection to
// host:port, or any HTTP answer from a URL.
func docReady(target string) bool {
	switch {
	case target == "":
		return true
	case strings.Contains(target, "://"):
		c := http.Client{Timeout: time.Second}
		resp, err := c.Get(target)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	default:
		c, err := net.DialTimeout("tcp", target, 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

// need provides what a block needs, once per file.
func (s *docSession) need(what, where string) {
	t := s.t
	if s.have[what] || t.Failed() {
		return
	}
	s.have[what] = true
	switch what {
	case "redis":
		acl := filepath.Join(t.TempDir(), "users.acl")
		if err := os.WriteFile(acl, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		r := testenv.StartRedis(t, testenv.RedisOptions{Port: docRedisPort, Args: []string{"--aclfile", acl}})
		s.run(where+" (needs redis)", "export REDIS_URL="+r.URL(), nil)
	case "postgres":
		pg := testenv.StartPostgres(t)
		s.run(where+" (needs postgres)", fmt.Sprintf("export PGHOST=127.0.0.1 PGPORT=%d PG_ADMIN_URL=%s", pg.Port, shellQuote(pg.DSN())), nil)
	case "m1-authz":
		var b [24]byte
		_, _ = rand.Read(b[:])
		if err := os.MkdirAll(filepath.Join(s.dir, "data"), 0o700); err != nil {
			t.Fatal(err)
		}
		testenv.SeedDataDir(t, filepath.Join(s.dir, "data"))
		s.run(where+" (needs m1-authz)", `export M1_ADMIN_TOKEN="${M1_ADMIN_TOKEN:-`+hex.EncodeToString(b[:])+`}"`, nil)
		s.background(where+" (needs m1-authz)", docBlock{lines: []string{"m1-authz"}, note: docNote{mode: "background", wait: "127.0.0.1:9192"}})
	}
}

// stopBackground stops the servers started so far, newest first, and
// waits until they are gone (their ports free).
func (s *docSession) stopBackground() {
	for i := len(s.bgs) - 1; i >= 0; i-- {
		srv := s.bgs[i]
		_ = syscall.Kill(-srv.pgid, syscall.SIGTERM)
		// The session reaps its job; wait returns when the group leader
		// has exited.
		if !s.busy {
			if _, ok := s.send(fmt.Sprintf("wait %d 2>/dev/null; __doc_rc=0", srv.pgid), docStopTimeout); !ok {
				_ = syscall.Kill(-srv.pgid, syscall.SIGKILL)
			}
		}
		waitGroupGone(s.t, srv.pgid)
	}
	s.bgs = nil
}

// dumpServers logs the output of the servers running, once.
func (s *docSession) dumpServers() {
	for _, srv := range s.bgs {
		if srv.dumped {
			continue
		}
		got, _ := os.ReadFile(srv.log)
		s.t.Logf("output of the server started at %s:\n%s", srv.where, got)
		srv.dumped = true
	}
}

// close stops the servers, ends the shell and whatever it left running.
func (s *docSession) close() {
	s.stopBackground()
	s.stdin.Close()
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	// Processes a command started with & stay in the session's group.
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	waitGroupGone(s.t, s.cmd.Process.Pid)
	<-done
}

// waitGroupGone waits until no live process is left in the group, killing
// it after docStopTimeout.
func waitGroupGone(t *testing.T, pgid int) {
	deadline := time.Now().Add(docStopTimeout)
	killed := false
	for groupAlive(pgid) {
		if time.Now().After(deadline) {
			if killed {
				t.Errorf("process group %d still running after SIGKILL", pgid)
				return
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed, deadline = true, time.Now().Add(5*time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// groupAlive reports whether a process of the group is alive (zombies,
// which their parent has not reaped yet, do not count).
func groupAlive(pgid int) bool {
	if syscall.Kill(-pgid, 0) != nil {
		return false
	}
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		return true // no /proc: the group exists
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp …; comm may hold spaces and parens.
		rest := b[bytes.LastIndexByte(b, ')')+1:]
		fields := strings.Fields(string(rest))
		if len(fields) >= 3 && fields[2] == strconv.Itoa(pgid) && fields[0] != "Z" {
			return true
		}
	}
	return false
}
