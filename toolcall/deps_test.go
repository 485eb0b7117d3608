package toolcall

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// heavyModules are the modules of the decision pipeline's backends: the
// policy engine, the in-process cache and Redis. The wire format and the
// orchestrator must not link them.
var heavyModules = []string{
	"github.com/open-policy-agent/opa",
	"github.com/maypok86/otter",
	"github.com/redis/go-redis",
}

// knownDeps are the paths to a heavy module that a root takes today on
// purpose, as root → the package importing the module → the module. The
// orchestrator verifies approval tokens with internal/approval, whose
// Verifier caches verified signatures in otter.
var knownDeps = map[string][]string{
	"github.com/m1-agent/m1/orchestrator": {
		"github.com/m1-agent/m1/internal/approval -> github.com/maypok86/otter",
	},
}

// TestNoHeavyDeps keeps toolcall a leaf and the orchestrator off the
// decision pipeline: neither may link OPA, otter or go-redis, other than by
// the paths knownDeps lists. It runs go list -deps and skips only when the
// go tool cannot be found.
func TestNoHeavyDeps(t *testing.T) {
	goTool := findGo(t)
	for _, root := range []string{"github.com/m1-agent/m1/toolcall", "github.com/m1-agent/m1/orchestrator"} {
		t.Run(filepath.Base(root), func(t *testing.T) {
			out, err := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", root).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", root, err, out)
			}
			imports := map[string][]string{}
			for line := range strings.Lines(string(out)) {
				f := strings.Fields(line)
				if len(f) > 0 {
					imports[f[0]] = f[1:]
				}
			}
			if _, ok := imports[root]; !ok {
				t.Fatalf("go list -deps %s does not list %s:\n%s", root, root, out)
			}
			found := map[string]bool{}
			for pkg, imps := range imports {
				if heavy(pkg) != "" {
					continue
				}
				for _, imp := range imps {
					m := heavy(imp)
					if m == "" {
						continue
					}
					edge := pkg + " -> " + m
					found[edge] = true
					if !slices.Contains(knownDeps[root], edge) {
						t.Errorf("%s links %s: %s", root, m, strings.Join(chain(imports, root, pkg), " -> ")+" -> "+imp)
					}
				}
			}
			for _, edge := range knownDeps[root] {
				if !found[edge] {
					t.Errorf("%s no longer links %s: remove it from knownDeps", root, edge)
				}
			}
		})
	}
}

// heavy returns the heavy module that pkg belongs to, or "".
func heavy(pkg string) string {
	for _, m := range heavyModules {
		if pkg == m || strings.HasPrefix(pkg, m+"/") {
			return m
		}
	}
	return ""
}

// chain returns a shortest import path from root to pkg.
func chain(imports map[string][]string, root, pkg string) []string {
	prev := map[string]string{root: ""}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == pkg {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append(path, p)
			}
			slices.Reverse(path)
			return path
		}
		for _, imp := range imports[p] {
			if _, seen := prev[imp]; !seen {
				prev[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	return []string{root, "…", pkg}
}

// findGo returns the go tool that built this test, else the one on PATH
// (go test puts GOROOT/bin first), and skips the test when there is none.
func findGo(t *testing.T) string {
	t.Helper()
	//lint:ignore SA1019 the GOROOT of the build is the go tool wanted here
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"+exeSuffix()); runtime.GOROOT() != "" {
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("SKIP: no go tool (GOROOT/bin or PATH): cannot check the dependencies: %v", err)
	}
	return p
}

func exeSuffix() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}
