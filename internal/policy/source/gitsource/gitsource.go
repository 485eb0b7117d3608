// Package gitsource is the policy source of M1_POLICY_GIT_URL: a bundle
// kept in a Git repository, at a branch or tag (M1_POLICY_GIT_REF) and a
// directory in it (M1_POLICY_GIT_PATH). It uses go-git, a pure-Go Git
// implementation, and never runs the git binary: https and ssh URLs are
// fetched shallow (depth 1, one ref, no tags) into memory after a cheap
// ls-remote tells the commit changed; a file URL or a plain path is read in
// place. The revision is the commit id unless the bundle's .manifest names
// one.
package gitsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"strings"
	"testing/fstest"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"github.com/go-git/go-git/v5/storage/memory"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
)

// Options configure a Source.
type Options struct {
	// URL of the repository: https://…, ssh://… or git@host:path (scp
	// form), file://… or a local path (required). https credentials may be
	// given in the URL (https://user:token@host/…).
	URL string
	// Ref is a branch or tag name (default "main").
	Ref string
	// Path is the bundle root inside the repository ("" = the root).
	Path string
	// SSHKeyFile is a private key for ssh URLs; empty uses the ssh agent.
	SSHKeyFile string
	// Timeout bounds one fetch.
	Timeout time.Duration
	// Read bounds and verifies the bundle.
	Read policy.ReadOptions
}

// DefaultOptions returns the defaults: ref main, a 60 s fetch timeout.
func DefaultOptions() Options { return Options{Ref: "main", Timeout: 60 * time.Second} }

func (o Options) validate() error {
	switch {
	case o.URL == "":
		return errors.New("gitsource: URL (M1_POLICY_GIT_URL) is empty")
	case o.Ref == "":
		return errors.New("gitsource: Ref (M1_POLICY_GIT_REF) is empty")
	case o.Timeout <= 0:
		return errors.New("gitsource: Timeout must be positive")
	case hasDotDot(o.Path):
		return fmt.Errorf("gitsource: Path (M1_POLICY_GIT_PATH) %q leaves the repository", o.Path)
	}
	return nil
}

func hasDotDot(p string) bool {
	for seg := range strings.SplitSeq(p, "/") {
		if seg == ".." {
			return true
		}
	}
	return false
}

// Source reads a bundle from a Git repository.
type Source struct {
	opts  Options
	local string // the repository's directory for a file URL, else ""
	auth  transport.AuthMethod
	where string // URL without credentials, for messages
}

var _ source.Loader = (*Source)(nil)

// New returns a Source; nothing is fetched yet.
func New(o Options) (*Source, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o.Path = strings.Trim(path.Clean("/"+o.Path), "/")
	s := &Source{opts: o, where: o.URL}
	switch {
	case strings.HasPrefix(o.URL, "file://"):
		u, err := url.Parse(o.URL)
		if err != nil {
			return nil, fmt.Errorf("gitsource: URL (M1_POLICY_GIT_URL): %w", err)
		}
		s.local = u.Path
	case strings.HasPrefix(o.URL, "/") || strings.HasPrefix(o.URL, "."):
		s.local = o.URL
	default:
		ep, err := transport.NewEndpoint(o.URL)
		if err != nil {
			return nil, fmt.Errorf("gitsource: URL (M1_POLICY_GIT_URL): %w", err)
		}
		if ep.Password != "" {
			ep.Password = "REDACTED"
		}
		s.where = ep.String()
		if ep.Protocol == "ssh" {
			user := ep.User
			if user == "" {
				user = "git"
			}
			if o.SSHKeyFile != "" {
				s.auth, err = gitssh.NewPublicKeysFromFile(user, o.SSHKeyFile, "")
			} else {
				s.auth, err = gitssh.NewSSHAgentAuth(user)
			}
			if err != nil {
				return nil, fmt.Errorf("gitsource: ssh auth: %w", err)
			}
		}
	}
	return s, nil
}

// Load fetches the ref. With tag (the last commit id) an unchanged ref
// gives ErrNotModified without fetching objects.
func (s *Source) Load(ctx context.Context, tag string) (source.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	var (
		repo   *git.Repository
		commit plumbing.Hash
		err    error
	)
	if s.local != "" {
		repo, commit, err = s.open()
	} else {
		repo, commit, err = s.fetch(ctx, tag)
	}
	if err != nil {
		return source.Result{}, err
	}
	if tag != "" && commit.String() == tag {
		return source.Result{}, source.ErrNotModified
	}
	c, err := repo.CommitObject(commit)
	if err != nil {
		return source.Result{}, fmt.Errorf("git %s: commit %s: %w", s.where, commit, err)
	}
	tree, err := c.Tree()
	if err != nil {
		return source.Result{}, fmt.Errorf("git %s: tree of %s: %w", s.where, commit, err)
	}
	if s.opts.Path != "" {
		if tree, err = tree.Tree(s.opts.Path); err != nil {
			return source.Result{}, fmt.Errorf("git %s at %s: path %q: %w", s.where, short(commit), s.opts.Path, err)
		}
	}
	fsys, err := treeFS(tree, s.opts.Read.MaxBytes)
	if err != nil {
		return source.Result{}, fmt.Errorf("git %s at %s: %w", s.where, short(commit), err)
	}
	b, err := policy.ReadFS(fsys, s.opts.Read)
	if err != nil {
		return source.Result{}, fmt.Errorf("git %s at %s: %w", s.where, short(commit), err)
	}
	if !b.ManifestRevision() {
		b.Revision = commit.String()
	}
	return source.Result{Bundle: b, Tag: commit.String()}, nil
}

func short(h plumbing.Hash) string { return h.String()[:12] }

// open reads a repository in place (a file URL).
func (s *Source) open() (*git.Repository, plumbing.Hash, error) {
	repo, err := git.PlainOpenWithOptions(s.local, &git.PlainOpenOptions{})
	if err != nil {
		return nil, plumbing.ZeroHash, fmt.Errorf("git %s: open: %w", s.where, err)
	}
	for _, name := range []plumbing.ReferenceName{plumbing.NewBranchReferenceName(s.opts.Ref), plumbing.NewTagReferenceName(s.opts.Ref)} {
		ref, err := repo.Reference(name, true)
		if err != nil {
			continue
		}
		h, err := peel(repo, ref.Hash())
		return repo, h, err
	}
	return nil, plumbing.ZeroHash, fmt.Errorf("git %s: no branch or tag %q", s.where, s.opts.Ref)
}

// fetch resolves the ref with ls-remote and, when it moved, clones that
// one commit (depth 1) into memory.
func (s *Source) fetch(ctx context.Context, tag string) (*git.Repository, plumbing.Hash, error) {
	remote := git.NewRemote(memory.NewStorage(), &config.RemoteConfig{Name: "origin", URLs: []string{s.opts.URL}})
	refs, err := remote.ListContext(ctx, &git.ListOptions{Auth: s.auth})
	if err != nil {
		return nil, plumbing.ZeroHash, fmt.Errorf("git %s: ls-remote: %w", s.where, err)
	}
	var name plumbing.ReferenceName
	var head plumbing.Hash
	for _, want := range []plumbing.ReferenceName{plumbing.NewBranchReferenceName(s.opts.Ref), plumbing.NewTagReferenceName(s.opts.Ref)} {
		for _, r := range refs {
			if r.Name() == want {
				name, head = want, r.Hash()
			}
		}
		if name != "" {
			break
		}
	}
	if name == "" {
		return nil, plumbing.ZeroHash, fmt.Errorf("git %s: no branch or tag %q", s.where, s.opts.Ref)
	}
	if tag != "" && head.String() == tag && name.IsBranch() {
		return nil, head, source.ErrNotModified
	}
	repo, err := git.CloneContext(ctx, memory.NewStorage(), nil, &git.CloneOptions{
		URL:           s.opts.URL,
		Auth:          s.auth,
		ReferenceName: name,
		SingleBranch:  true,
		Depth:         1,
		Tags:          git.NoTags,
		NoCheckout:    true,
	})
	if err != nil {
		return nil, plumbing.ZeroHash, fmt.Errorf("git %s: fetch %s: %w", s.where, s.opts.Ref, err)
	}
	ref, err := repo.Reference(name, true)
	if err != nil {
		ref, err = repo.Head()
	}
	if err != nil {
		return nil, plumbing.ZeroHash, fmt.Errorf("git %s: resolve %s: %w", s.where, s.opts.Ref, err)
	}
	h, err := peel(repo, ref.Hash())
	return repo, h, err
}

// peel turns an annotated tag's hash into its commit's.
func peel(repo *git.Repository, h plumbing.Hash) (plumbing.Hash, error) {
	if t, err := repo.TagObject(h); err == nil {
		c, err := t.Commit()
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("tag %s: %w", t.Name, err)
		}
		return c.Hash, nil
	}
	return h, nil
}

// treeFS copies a tree's regular files into memory, up to limit bytes
// (0: policy.DefaultMaxBundleBytes). Links and submodules are skipped.
func treeFS(tree *object.Tree, limit int64) (fs.FS, error) {
	if limit <= 0 {
		limit = policy.DefaultMaxBundleBytes
	}
	m := fstest.MapFS{}
	var total int64
	err := tree.Files().ForEach(func(f *object.File) error {
		if !f.Mode.IsFile() {
			return nil
		}
		if total += f.Size; total > limit {
			return fmt.Errorf("%s: %w (limit %d bytes)", f.Name, policy.ErrTooLarge, limit)
		}
		r, err := f.Reader()
		if err != nil {
			return err
		}
		defer r.Close()
		b, err := io.ReadAll(io.LimitReader(r, f.Size+1))
		if err != nil {
			return err
		}
		m[f.Name] = &fstest.MapFile{Data: b, Mode: 0o644}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}
