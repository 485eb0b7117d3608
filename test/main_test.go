package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// binVersion is stamped into the binaries under test with -ldflags, as
// make build and make release do, so that --version, /health and
// m1_build_info can be checked for it.
const binVersion = "e2e-test"

// The binaries TestMain builds.
var (
	binPath  string // m1-authz
	cliPath  string // m1
	orchPath string // m1-orchestrator
	toolPath string // m1-demo-tool
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "m1-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "m1-authz")
	cliPath = filepath.Join(dir, "m1")
	orchPath = filepath.Join(dir, "m1-orchestrator")
	toolPath = filepath.Join(dir, "m1-demo-tool")
	if err := buildBinaries(dir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// buildBinaries builds the commands into dir, with the race detector when
// the tests run with it.
func buildBinaries(dir string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	// A cold build of the race-instrumented dependencies (OPA, gRPC) takes
	// minutes on two cores; a warm one takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args := []string{"build", "-o", dir + string(filepath.Separator), "-ldflags", "-X github.com/m1-agent/m1/internal/buildinfo.version=" + binVersion}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/m1-agent/m1/cmd/m1-authz", "github.com/m1-agent/m1/cmd/m1",
		"github.com/m1-agent/m1/cmd/m1-orchestrator", "github.com/m1-agent/m1/cmd/m1-demo-tool")
	cmd := exec.CommandContext(ctx, goBin, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, b)
	}
	return nil
}
