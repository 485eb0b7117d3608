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

// binVersion is stamped into the binary under test with -ldflags, so that
// /health can be checked for it.
const binVersion = "e2e-test"

// binPath is the m1-authz binary TestMain builds.
var binPath string

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
	if err := buildBinary(binPath); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// buildBinary builds cmd/m1-authz into out, with the race detector when
// the tests run with it.
func buildBinary(out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	// A cold build of the race-instrumented dependencies (OPA, gRPC) takes
	// minutes on two cores; a warm one takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + binVersion}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/m1-agent/m1/cmd/m1-authz")
	cmd := exec.CommandContext(ctx, goBin, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, b)
	}
	return nil
}
