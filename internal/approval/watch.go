package approval

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Log field names.
const (
	fieldPath = "path"
	fieldKIDs = "kids"
)

// defaultDebounce coalesces the burst of events one file replacement makes.
const defaultDebounce = 100 * time.Millisecond

// WatchStatus is a [Watcher]'s state, for /health and logs.
type WatchStatus struct {
	Path      string
	KIDs      []string  // kids of the keys in use
	LoadedAt  time.Time // when the keys in use were loaded; zero before the first load
	LastError string    // the last load's error; "" once a load succeeds
}

// Watcher keeps a Verifier's keys in step with a JWKS file. It reloads when
// the file changes, watching the file's directory with fsnotify so that
// atomic renames and Kubernetes ConfigMap symlink swaps are seen, and when
// Reload is called (main calls it on SIGHUP). A file that fails to load
// leaves the previous keys in use; Status reports the error until a load
// succeeds. Its methods are safe for concurrent use.
type Watcher struct {
	path     string
	secret   []byte
	v        *Verifier
	logger   *zap.Logger
	debounce time.Duration

	mu      sync.Mutex // serializes loads; guards the fields below
	status  WatchStatus
	lastSum [sha256.Size]byte // of the content last loaded or rejected
	haveSum bool
}

// NewWatcher returns a Watcher that loads path into v, adding secret (the
// HS256 M1_JWT_SECRET, may be nil) to every key set it loads. logger may be
// nil. Call Start to watch.
func NewWatcher(path string, secret []byte, v *Verifier, logger *zap.Logger) *Watcher {
	if logger == nil {
		logger = zap.NewNop()
	}
	w := &Watcher{
		path:     path,
		secret:   slices.Clone(secret),
		v:        v,
		logger:   logger,
		debounce: defaultDebounce,
	}
	w.status = WatchStatus{Path: path, KIDs: v.Keys().KIDs()}
	return w
}

// Start loads the file once and starts watching its directory; it returns
// once the watch is in place (an error only if the directory cannot be
// watched). In the background it reloads the file whenever a change alters
// its content, until ctx ends. Load failures go to Status and the log.
func (w *Watcher) Start(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch jwks %q: %w", w.path, err)
	}
	if err := fw.Add(filepath.Dir(w.path)); err != nil {
		fw.Close()
		return fmt.Errorf("watch jwks %q: %w", w.path, err)
	}
	_ = w.load(false)
	go w.watch(ctx, fw)
	return nil
}

func (w *Watcher) watch(ctx context.Context, fw *fsnotify.Watcher) {
	defer fw.Close()
	timer := time.NewTimer(0)
	if !timer.Stop() {
		<-timer.C
	}
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-fw.Events:
			if !ok {
				w.logger.Error("jwks watch stopped: event stream closed", zap.String(fieldPath, w.path))
				return
			}
			// Any change in the directory may be ours (a rename over the
			// file, a ConfigMap's ..data swap); load compares content.
			timer.Reset(w.debounce)
		case err, ok := <-fw.Errors:
			if !ok {
				w.logger.Error("jwks watch stopped: error stream closed", zap.String(fieldPath, w.path))
				return
			}
			w.logger.Warn("jwks watch error", zap.String(fieldPath, w.path), zap.Error(err))
		case <-timer.C:
			_ = w.load(false)
		}
	}
}

// Reload loads the file now, even if unchanged, and returns the load error
// (the previous keys then stay in use).
func (w *Watcher) Reload() error { return w.load(true) }

// Status returns the current status (a copy).
func (w *Watcher) Status() WatchStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.KIDs = slices.Clone(s.KIDs)
	return s
}

// load reads and installs the file; unless force, content identical to the
// last load or rejection is skipped.
func (w *Watcher) load(force bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.haveSum = false // the same content coming back must load (and clear the error)
		return w.fail(fmt.Errorf("load jwks: %w", err))
	}
	sum := sha256.Sum256(data)
	if !force && w.haveSum && sum == w.lastSum {
		return nil
	}
	w.lastSum, w.haveSum = sum, true
	ks, err := ParseJWKS(data)
	if err == nil && len(w.secret) > 0 {
		ks, err = ks.WithSecret(w.secret)
	}
	if err != nil {
		return w.fail(fmt.Errorf("load jwks %q: %w", w.path, err))
	}
	w.v.SetKeys(ks)
	w.status.KIDs = ks.KIDs()
	w.status.LoadedAt = w.v.now()
	w.status.LastError = ""
	w.logger.Info("jwks loaded", zap.String(fieldPath, w.path), zap.Strings(fieldKIDs, w.status.KIDs))
	return nil
}

func (w *Watcher) fail(err error) error {
	w.status.LastError = err.Error()
	w.logger.Error("jwks load failed; keeping the previous keys", zap.String(fieldPath, w.path), zap.Error(err))
	return err
}
