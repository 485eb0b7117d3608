package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolveVersion(t *testing.T) {
	for _, tc := range []struct {
		name, stamped string
		bi            *debug.BuildInfo
		want          string
	}{
		{"stamped", "0.10.0", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "0.10.0"},
		{"stamped from a git tag", "v0.10.0", nil, "0.10.0"},
		{"go install @version", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.10.0"}}, "0.10.0"},
		{"local build", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"no build info", "", nil, "dev"},
	} {
		if got := resolveVersion(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("resolveVersion(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestResolveRevision(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}
	}
	for _, tc := range []struct {
		name, stamped string
		bi            *debug.BuildInfo
		want          string
	}{
		{"vcs stamp", "", vcs("abc123", "false"), "abc123"},
		{"vcs stamp, dirty tree", "", vcs("abc123", "true"), "abc123-dirty"},
		{"vcs stamp wins over ldflags", "def456", vcs("abc123", "false"), "abc123"},
		{"ldflags (image build, no .git)", "def456", &debug.BuildInfo{}, "def456"},
		{"nothing", "", nil, "unknown"},
	} {
		if got := resolveRevision(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("resolveRevision(%s) = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestString(t *testing.T) {
	got := String("m1-authz")
	for _, want := range []string{"m1-authz " + Version() + " ", "revision " + Revision(), runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(got, want) {
			t.Errorf("String() = %q, want it to contain %q", got, want)
		}
	}
}
