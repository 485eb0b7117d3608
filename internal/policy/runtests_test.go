package policy

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/m1-agent/m1/policies"
)

func TestRunTests(t *testing.T) {
	const lib = "package lib\n\nimport rego.v1\n\ndouble(x) := x * 2\n\nlimit := data.limits.max\n"
	tests := []struct {
		name   string
		tests  map[string]string
		wantOK bool
		want   []string // substrings of the report
	}{
		{
			name: "all pass",
			tests: map[string]string{"lib_test.rego": "package lib_test\n\nimport rego.v1\n\nimport data.lib\n\n" +
				"test_double if lib.double(2) == 4\n\ntest_data if lib.limit == 3\n\ntest_print if {\n\tprint(\"hello\")\n}\n"},
			wantOK: true,
			want:   []string{"data.lib_test.test_double: PASS", "data.lib_test.test_data: PASS", "PASS: 3/3"},
		},
		{
			name: "one fails",
			tests: map[string]string{"lib_test.rego": "package lib_test\n\nimport rego.v1\n\nimport data.lib\n\n" +
				"test_double if lib.double(2) == 4\n\ntest_wrong if {\n\tprint(\"checking\")\n\tlib.double(2) == 5\n}\n"},
			want: []string{"data.lib_test.test_double: PASS", "data.lib_test.test_wrong: FAIL", "lib_test.rego:11:", "checking", "FAIL: 1/2"},
		},
		{
			name: "one errors",
			tests: map[string]string{"lib_test.rego": "package lib_test\n\nimport rego.v1\n\n" +
				"test_conflict if {\n\tf(1)\n}\n\nf(x) := true\n\nf(x) := false\n"},
			want: []string{"data.lib_test.test_conflict: ERROR", "ERROR: 1/1"},
		},
		{
			name:   "no tests",
			wantOK: true,
			want:   []string{"no tests"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Bundle{
				Modules: map[string]string{"lib.rego": lib},
				Tests:   tt.tests,
				Data:    map[string]any{"limits": map[string]any{"max": 3}},
			}
			var report strings.Builder
			ok, err := RunTests(context.Background(), b, &report)
			if err != nil {
				t.Fatalf("RunTests(%s) error: %v", tt.name, err)
			}
			if ok != tt.wantOK {
				t.Errorf("RunTests(%s) ok = %v, want %v; report:\n%s", tt.name, ok, tt.wantOK, report.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(report.String(), w) {
					t.Errorf("RunTests(%s) report lacks %q:\n%s", tt.name, w, report.String())
				}
			}
		})
	}
}

func TestRunTestsErrors(t *testing.T) {
	tests := []struct {
		name   string
		bundle *Bundle
		want   string
	}{
		{
			name:   "parse error in a test file",
			bundle: &Bundle{Modules: map[string]string{"p.rego": minimalPolicy}, Tests: map[string]string{"p_test.rego": "package t\n\nimport rego.v1\n\ntest_x if {\n\t1 = = 1\n}\n"}},
			want:   "p_test.rego:6: rego_parse_error",
		},
		{
			name:   "compile error in a test file",
			bundle: &Bundle{Modules: map[string]string{"p.rego": minimalPolicy}, Tests: map[string]string{"p_test.rego": "package t\n\nimport rego.v1\n\ntest_x if {\n\tx == 1\n}\n"}},
			want:   "compile policy tests: 1 error occurred: p_test.rego:6: rego_unsafe_var_error: var x is unsafe",
		},
		{
			name:   "nil bundle",
			bundle: nil,
			want:   "nil bundle",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, err := RunTests(context.Background(), tt.bundle, new(strings.Builder))
			if ok || err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("RunTests(%s) = %v, %v, want false, error containing %q", tt.name, ok, err, tt.want)
			}
		})
	}
}

func TestRunTestsCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b := &Bundle{Modules: map[string]string{"p.rego": minimalPolicy}, Tests: map[string]string{"p_test.rego": "package t\n\nimport rego.v1\n\ntest_x if true\n"}}
	ok, err := RunTests(ctx, b, new(strings.Builder))
	if ok || !errors.Is(err, context.Canceled) {
		t.Errorf("RunTests(cancelled) = %v, %v, want false, context.Canceled", ok, err)
	}
}

func TestRunTestsDefaultBundle(t *testing.T) {
	b, err := LoadFS(policies.FS())
	if err != nil {
		t.Fatal(err)
	}
	var report strings.Builder
	ok, err := RunTests(context.Background(), b, &report)
	if err != nil || !ok {
		t.Fatalf("RunTests(default bundle) = %v, %v, want true; report:\n%s", ok, err, report.String())
	}
	if !strings.Contains(report.String(), "data.m1.authz_test.test_tool_call_approval_without_token_denied: PASS") {
		t.Errorf("RunTests(default bundle) report lacks per-test lines:\n%s", report.String())
	}
}
