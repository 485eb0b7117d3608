// Package dirsource is the policy source of M1_POLICY_DIR: a bundle
// directory read at each Load and watched with fsnotify, so that an edit
// (or a Kubernetes ConfigMap update) is loaded within a debounce interval.
package dirsource

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
)

// Options configure a Source.
type Options struct {
	// Dir is the bundle's root directory (required).
	Dir string
	// Read bounds and verifies what is read.
	Read policy.ReadOptions
	// Debounce is how long Watch waits after the last change before it
	// reports one; an editor's save or a ConfigMap swap is several events.
	Debounce time.Duration
}

// DefaultOptions returns the defaults: a 200 ms debounce.
func DefaultOptions() Options { return Options{Debounce: 200 * time.Millisecond} }

func (o Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("dirsource: Dir (M1_POLICY_DIR) is empty")
	case o.Debounce <= 0:
		return errors.New("dirsource: Debounce must be positive")
	}
	return nil
}

// Source reads a bundle directory.
type Source struct{ opts Options }

var _ source.Loader = (*Source)(nil)

// New returns a Source for o.Dir; nothing is read yet.
func New(o Options) (*Source, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	return &Source{opts: o}, nil
}

// Load reads the directory. The tag is the digest of the bundle's files, so
// an unchanged directory gives ErrNotModified, and changed files do not,
// even under an unchanged .manifest revision.
func (s *Source) Load(_ context.Context, tag string) (source.Result, error) {
	b, err := policy.ReadDir(s.opts.Dir, s.opts.Read)
	if err != nil {
		return source.Result{}, err
	}
	if tag != "" && b.Digest == tag {
		return source.Result{}, source.ErrNotModified
	}
	return source.Result{Bundle: b, Tag: b.Digest}, nil
}

// Watch calls changed, at most once per Debounce, after files under the
// directory change, until ctx ends; then it returns nil. It watches every
// subdirectory (new ones too) and the directory itself, so that a
// ConfigMap's atomic "..data" swap counts. It fails only when the watch
// cannot be set up.
func (s *Source) Watch(ctx context.Context, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.opts.Dir, err)
	}
	defer w.Close()
	if err := addTree(w, s.opts.Dir); err != nil {
		return fmt.Errorf("watch %s: %w", s.opts.Dir, err)
	}
	var (
		timer   *time.Timer
		timerC  <-chan time.Time
		pending bool
	)
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
					_ = addTree(w, ev.Name)
				}
			}
			pending = true
			if timer == nil {
				timer = time.NewTimer(s.opts.Debounce)
				timerC = timer.C
			} else {
				timer.Reset(s.opts.Debounce)
			}
		case <-w.Errors:
			// An overflow loses events: reload to be sure.
			pending = true
			if timer == nil {
				timer = time.NewTimer(s.opts.Debounce)
				timerC = timer.C
			}
		case <-timerC:
			if pending {
				pending = false
				changed()
			}
		}
	}
}

// addTree watches dir and its subdirectories, except dot-directories other
// than a ConfigMap's "..data" targets (which are swapped, and seen through
// the root).
func addTree(w *fsnotify.Watcher, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if p != dir && strings.HasPrefix(d.Name(), ".") {
			return fs.SkipDir
		}
		return w.Add(p)
	})
}
