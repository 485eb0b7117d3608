// Package buildinfo identifies a build of M1: the release version, the
// source revision and the Go version. Every binary reports the same values
// (--version, m1 version, /health, the m1_build_info metric) from here.
//
// The version is stamped at link time, once for all binaries:
//
//	go build -ldflags "-X github.com/m1-agent/m1/internal/buildinfo.version=0.10.0" ./cmd/...
//
// Without it, a binary installed with `go install …@v0.10.0` reports its
// module version, and anything else reports "dev". The revision comes from
// Go's VCS stamp when the build had one, else from
// -X github.com/m1-agent/m1/internal/buildinfo.revision=<commit> (image
// builds have no .git), else "unknown".
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Set with -ldflags -X; see the package comment.
var (
	version  string
	revision string
)

// Version is the release version without a leading "v" ("0.10.0"), or
// "dev" for a build that was not stamped.
func Version() string {
	bi, _ := debug.ReadBuildInfo()
	return resolveVersion(version, bi)
}

// Revision is the source revision (a git commit, "-dirty" when the tree had
// changes), or "unknown".
func Revision() string {
	bi, _ := debug.ReadBuildInfo()
	return resolveRevision(revision, bi)
}

// GoVersion is the Go release the binary was built with.
func GoVersion() string { return runtime.Version() }

// String is the one-line answer to --version: the program's name, its
// version, revision, Go version and platform.
func String(program string) string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", program, Version(), Revision(), GoVersion(), runtime.GOOS, runtime.GOARCH)
}

func resolveVersion(stamped string, bi *debug.BuildInfo) string {
	if stamped != "" {
		return strings.TrimPrefix(stamped, "v")
	}
	if bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return strings.TrimPrefix(bi.Main.Version, "v")
	}
	return "dev"
}

func resolveRevision(stamped string, bi *debug.BuildInfo) string {
	if bi != nil {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if dirty {
				rev += "-dirty"
			}
			return rev
		}
	}
	if stamped != "" {
		return stamped
	}
	return "unknown"
}
