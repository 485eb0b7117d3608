package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// runResult is what one m1 invocation did.
type runResult struct {
	code           int
	stdout, stderr string
}

// m1 runs Main with args and stdin, as the binary would.
func m1(t *testing.T, stdin string, args ...string) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(t.Context(), args, strings.NewReader(stdin), &out, &errOut)
	return runResult{code, out.String(), errOut.String()}
}

// m1Env runs the command line with env as the whole environment.
func m1Env(t *testing.T, env map[string]string, args ...string) runResult {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &cmdIO{
		stdin:  strings.NewReader(""),
		stdout: &out,
		stderr: &errOut,
		lookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
	})
	return runResult{code, out.String(), errOut.String()}
}

func (r runResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func TestHelpAndUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string // substring of stdout, "" for none expected
		wantStderr string
	}{
		{"no arguments", nil, 2, "", "Commands:"},
		{"help", []string{"help"}, 0, "Commands:", ""},
		{"-h", []string{"-h"}, 0, "Commands:", ""},
		{"--help", []string{"--help"}, 0, "Commands:", ""},
		{"help check", []string{"help", "check"}, 0, "--addr address", ""},
		{"check -h", []string{"check", "-h"}, 0, "$M1_AUTHZ_ADDR", ""},
		{"check --help after flags", []string{"check", "--json", "--help"}, 0, "Usage:\n  m1 check", ""},
		{"help policy", []string{"help", "policy"}, 0, "m1 policy eval", ""},
		{"policy -h", []string{"policy", "-h"}, 0, "m1 policy test [DIR]", ""},
		{"policy eval -h", []string{"policy", "eval", "-h"}, 0, "--input file", ""},
		{"help policy test", []string{"help", "policy", "test"}, 0, "m1 policy test [DIR]", ""},
		{"policy without command", []string{"policy"}, 2, "", "m1 policy eval"},
		{"policy unknown command", []string{"policy", "lint"}, 2, "", `unknown command "lint"`},
		{"unknown command", []string{"frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{"version", []string{"version"}, 0, "m1 dev (revision ", ""},
		{"--version", []string{"--version"}, 0, "m1 dev", ""},
		{"version with argument", []string{"version", "x"}, 2, "", "unexpected arguments"},
		{"bench dispatched", []string{"bench", "--no-such-flag"}, 2, "", "no-such-flag"},
		{"bench -h like the others", []string{"bench", "-h"}, 0, "Usage:\n  m1 bench [flags]", ""},
		{"help bench", []string{"help", "bench"}, 0, "  --requests int\n", ""},
		{"loadtest dispatched", []string{"loadtest", "--no-such-flag"}, 2, "", "no-such-flag"},
		{"loadtest bad scenario", []string{"loadtest", "--scenario", "cache,nope"}, 2, "", `Scenarios (--scenario): unknown "nope"`},
		{"help loadtest", []string{"help", "loadtest"}, 0, "Usage:\n  m1 loadtest [--scenario NAME]", ""},
		{"help lists loadtest", []string{"help"}, 0, "loadtest", ""},
		{"help lists preflight", []string{"help"}, 0, "preflight", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := m1(t, "", tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("m1 %s: exit %d, want %d\n%s", strings.Join(tt.args, " "), r.code, tt.wantCode, r)
			}
			if tt.wantStdout != "" && !strings.Contains(r.stdout, tt.wantStdout) {
				t.Errorf("m1 %s: stdout lacks %q\n%s", strings.Join(tt.args, " "), tt.wantStdout, r)
			}
			if tt.wantStderr != "" && !strings.Contains(r.stderr, tt.wantStderr) {
				t.Errorf("m1 %s: stderr lacks %q\n%s", strings.Join(tt.args, " "), tt.wantStderr, r)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		env      map[string]string
		wantOK   bool
		wantPos  []string
		wantName string
		wantJSON bool
	}{
		{"flags first", []string{"--name", "a", "dir"}, nil, true, []string{"dir"}, "a", false},
		{"flags after positional", []string{"dir", "--name", "a", "--json"}, nil, true, []string{"dir"}, "a", true},
		{"flags between positionals", []string{"x", "-json", "y", "-name=b"}, nil, true, []string{"x", "y"}, "b", true},
		{"double dash ends flags", []string{"--json", "--", "--name", "-"}, nil, true, []string{"--name", "-"}, "def", true},
		{"flag value that looks like a flag", []string{"--name", "--json"}, nil, true, nil, "--json", false},
		{"env default", nil, map[string]string{"M1_NAME": "from-env"}, true, nil, "from-env", false},
		{"flag beats env", []string{"--name", "flag"}, map[string]string{"M1_NAME": "from-env"}, true, nil, "flag", false},
		{"empty env ignored", nil, map[string]string{"M1_NAME": ""}, true, nil, "def", false},
		{"bad env value", nil, map[string]string{"M1_JSON": "maybe"}, false, nil, "", false},
		{"unknown flag", []string{"--nope"}, nil, false, nil, "", false},
		{"missing flag value", []string{"--name"}, nil, false, nil, "", false},
		{"too many arguments", []string{"a", "b", "c"}, nil, false, nil, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := newFlagSet("test", "m1 test [A [B]]", "Test.", map[string]string{"name": "M1_NAME", "json": "M1_JSON"})
			name := fs.String("name", "def", "a `name`")
			asJSON := fs.Bool("json", false, "JSON")
			var errOut bytes.Buffer
			c := &cmdIO{stdout: &bytes.Buffer{}, stderr: &errOut, lookupEnv: func(k string) (string, bool) {
				v, ok := tt.env[k]
				return v, ok
			}}
			code, ok := parse(fs, c, tt.args, 0, 2)
			if ok != tt.wantOK {
				t.Fatalf("parse(%q) ok = %v (exit %d, stderr %q), want %v", tt.args, ok, code, errOut.String(), tt.wantOK)
			}
			if !ok {
				if code != exitError {
					t.Errorf("parse(%q) exit = %d, want %d", tt.args, code, exitError)
				}
				return
			}
			if got := fs.Args(); !slices.Equal(got, tt.wantPos) && len(got)+len(tt.wantPos) > 0 {
				t.Errorf("parse(%q) positional = %q, want %q", tt.args, got, tt.wantPos)
			}
			if *name != tt.wantName || *asJSON != tt.wantJSON {
				t.Errorf("parse(%q) name, json = %q, %v, want %q, %v", tt.args, *name, *asJSON, tt.wantName, tt.wantJSON)
			}
		})
	}
}

func TestUsageListsEveryFlag(t *testing.T) {
	fs := newFlagSet("x", "m1 x", "X.", map[string]string{"addr": "M1_X_ADDR"})
	fs.String("addr", "127.0.0.1:1", "the `address`")
	fs.Bool("json", false, "print JSON")
	var f listFlag
	fs.Var(&f, "header", "a `header` (repeatable)")
	var out bytes.Buffer
	fs.printUsage(&out)
	for _, want := range []string{
		"--addr address\n      the address ($M1_X_ADDR, default \"127.0.0.1:1\")",
		"--header header\n      a header (repeatable)\n",
		"--json\n      print JSON\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out.String())
		}
	}
	fs.VisitAll(func(fl *flag.Flag) {
		if !strings.Contains(out.String(), "--"+fl.Name) {
			t.Errorf("usage lacks --%s", fl.Name)
		}
	})
}

// decodeResult parses --json output: exactly one JSON object.
func decodeResult(t *testing.T, out string) result {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	var r result
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("--json output %q: more than one JSON value", out)
	}
	return r
}

func TestHealthCommand(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"status":"ok"}`)) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	defer bad.Close()
	for _, tt := range []struct {
		name string
		url  string
		want int
	}{{"up", ok.URL, 0}, {"failing", bad.URL, 1}, {"unreachable", "http://127.0.0.1:1/health/live", 2}} {
		var out, errOut bytes.Buffer
		if got := run(context.Background(), []string{"health", "--url", tt.url}, &cmdIO{stdout: &out, stderr: &errOut, lookupEnv: func(string) (string, bool) { return "", false }}); got != tt.want {
			t.Errorf("m1 health (%s) = %d, want %d (%s%s)", tt.name, got, tt.want, out.String(), errOut.String())
		}
	}
}

// m1 help lists the commands in two columns: every summary starts in the
// same column, at least two spaces after the longest name.
func TestHelpCommandsAligned(t *testing.T) {
	r := m1(t, "", "help")
	_, list, ok := strings.Cut(r.stdout, "Commands:\n")
	if r.code != exitOK || !ok {
		t.Fatalf("m1 help =\n%v", r)
	}
	list, _, _ = strings.Cut(list, "\n\n")
	lines := strings.Split(list, "\n")
	if len(lines) != len(commands()) {
		t.Fatalf("m1 help lists %d commands, want %d:\n%s", len(lines), len(commands()), list)
	}
	longest := 0
	for _, cmd := range commands() {
		longest = max(longest, len(cmd.name))
	}
	for i, cmd := range commands() {
		want := "  " + cmd.name + strings.Repeat(" ", longest-len(cmd.name)+2) + cmd.summary
		if lines[i] != want {
			t.Errorf("m1 help line %d = %q, want %q", i+1, lines[i], want)
		}
	}
}
