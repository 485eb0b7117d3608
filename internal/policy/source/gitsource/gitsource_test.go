package gitsource_test

import (
	"context"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/policy/source/gitsource"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
)

// repo is a real Git repository, committed to with go-git, whose bundle
// lives under policies/ (the GitHub-style layout of docs/POLICY.md).
type repo struct {
	dir  string
	git  *git.Repository
	head plumbing.Hash
	url  string // how the Loader reaches it
}

const bundlePath = "policies"

func newRepo(t *testing.T) *repo {
	t.Helper()
	dir := t.TempDir()
	r, err := git.PlainInitWithOptions(dir, &git.PlainInitOptions{InitOptions: git.InitOptions{DefaultBranch: plumbing.NewBranchReferenceName("main")}})
	if err != nil {
		t.Fatal(err)
	}
	return &repo{dir: dir, git: r, url: "file://" + dir}
}

func (r *repo) Publish(t *testing.T, files map[string]string) {
	t.Helper()
	root := filepath.Join(r.dir, bundlePath)
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	sourcetest.WriteDir(t, root, files)
	if err := os.WriteFile(filepath.Join(r.dir, "README.md"), []byte("# policies\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wt, err := r.git.Worktree()
	if err != nil {
		t.Fatal(err)
	}
	if err := wt.AddWithOptions(&git.AddOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	h, err := wt.Commit("policy update", &git.CommitOptions{
		Author:            &object.Signature{Name: "test", Email: "test@example.com", When: time.Now()},
		AllowEmptyCommits: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.head = h
}

func (r *repo) Revision(t *testing.T) string { return r.head.String() }

func (r *repo) Loader(t *testing.T, o policy.ReadOptions) source.Loader {
	t.Helper()
	opts := gitsource.DefaultOptions()
	opts.URL, opts.Path, opts.Read = r.url, bundlePath, o
	l, err := gitsource.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestConformanceFile(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T) sourcetest.Fixture { return newRepo(t) })
}

// TestConformanceHTTP serves the repository over Git's smart HTTP protocol
// (git http-backend as a CGI, test-only) so that the shallow fetch is the
// one https URLs take.
func TestConformanceHTTP(t *testing.T) {
	gitBin, err := exec.LookPath("git")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("git not found (apt-get install git): needed to serve a repository over HTTP")
		}
		t.Skip("SKIPPED LOUDLY: git not found; install it to test the HTTP transport")
	}
	sourcetest.Run(t, func(t *testing.T) sourcetest.Fixture {
		r := newRepo(t)
		srv := httptest.NewServer(&cgi.Handler{
			Path: gitBin,
			Args: []string{"http-backend"},
			Env:  []string{"GIT_PROJECT_ROOT=" + filepath.Dir(r.dir), "GIT_HTTP_EXPORT_ALL=1"},
		})
		t.Cleanup(srv.Close)
		r.url = srv.URL + "/" + filepath.Base(r.dir)
		return r
	})
}

func TestRefAndErrors(t *testing.T) {
	r := newRepo(t)
	r.Publish(t, sourcetest.Bundle("one"))
	for _, tt := range []struct {
		name string
		opts func(*gitsource.Options)
		want string
	}{
		{"unknown ref", func(o *gitsource.Options) { o.Ref = "release" }, `no branch or tag "release"`},
		{"unknown path", func(o *gitsource.Options) { o.Path = "nowhere" }, `path "nowhere"`},
		{"not a repository", func(o *gitsource.Options) { o.URL = "file://" + t.TempDir() }, "open"},
		{"unreachable https", func(o *gitsource.Options) { o.URL = "http://127.0.0.1:1/repo.git" }, "ls-remote"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			o := gitsource.DefaultOptions()
			o.URL, o.Path = r.url, bundlePath
			tt.opts(&o)
			l, err := gitsource.New(o)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Load(context.Background(), ""); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load(%s) error = %v, want one containing %q", tt.name, err, tt.want)
			}
		})
	}
	if _, err := gitsource.New(gitsource.Options{URL: r.url, Ref: "main", Path: "../x", Timeout: time.Second}); err == nil {
		t.Error("New(Path ../x) = nil error")
	}
}
