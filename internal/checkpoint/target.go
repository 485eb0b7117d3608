package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrExists is wrapped by Put's error when the name is taken: a target never
// overwrites a checkpoint.
var ErrExists = errors.New("checkpoint: a checkpoint of that name exists already")

// Target stores signed checkpoints, write-once. Implementations are safe
// for concurrent use.
type Target interface {
	// Put stores data under name, or fails wrapping ErrExists when name is
	// taken (the stored bytes are left as they are). Put is atomic: a
	// reader sees all of data or nothing.
	Put(ctx context.Context, name string, data []byte) error
}

// Open returns the target out names: an http:// or https:// URL (HTTP,
// token as a bearer token when not empty) or a directory (Dir).
func Open(out, token string) (Target, error) {
	switch {
	case out == "":
		return nil, errors.New("checkpoint: no target")
	case strings.HasPrefix(out, "http://") || strings.HasPrefix(out, "https://"):
		return NewHTTP(out, token)
	}
	return NewDir(out)
}

// validName keeps names to one path segment of safe characters.
func validName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 255 {
		return false
	}
	for i := range len(name) {
		c := name[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// Dir writes checkpoints to a directory, meant to be write-once object
// storage (a bucket with object lock mounted, a WORM volume) or one that
// is copied there. It never overwrites a file: each is written to a
// temporary file, synced, and linked to its name, which fails if the name
// exists.
type Dir struct {
	path string
}

var _ Target = (*Dir)(nil)

// NewDir returns the directory target at path, creating it (0700) if
// needed.
func NewDir(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("checkpoint directory: %w", err)
	}
	return &Dir{path: path}, nil
}

// Put writes data to the file name in the directory, never over one.
func (d *Dir) Put(_ context.Context, name string, data []byte) error {
	if !validName(name) {
		return fmt.Errorf("checkpoint: bad name %q", name)
	}
	tmp, err := os.CreateTemp(d.path, ".tmp-"+name+"-*")
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o444); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	final := filepath.Join(d.path, name)
	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, final)
		}
		return fmt.Errorf("write checkpoint: %w", err)
	}
	if dir, err := os.Open(d.path); err == nil { // make the new name durable
		_ = dir.Sync()
		dir.Close()
	}
	return nil
}

// HTTP PUTs checkpoints to base/name with "If-None-Match: *", the
// conditional write that S3, GCS (XML API), Azure Blob and WebDAV servers
// honour: a name that exists answers 412 and is not overwritten. Pair it
// with object lock or a retention policy on the bucket, so that the
// store's operator cannot delete checkpoints either.
type HTTP struct {
	base   *url.URL
	token  string
	client *http.Client
}

var _ Target = (*HTTP)(nil)

// NewHTTP returns the HTTP target at base (an http or https URL; a query,
// such as a pre-signed URL's, is kept). token, when not empty, is sent as a
// bearer token.
func NewHTTP(base, token string) (*HTTP, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("checkpoint URL %q: want an http:// or https:// URL", base)
	}
	return &HTTP{base: u, token: token, client: &http.Client{Timeout: 30 * time.Second}}, nil
}

// Put PUTs data to base/name, never over an existing object.
func (h *HTTP) Put(ctx context.Context, name string, data []byte) error {
	if !validName(name) {
		return fmt.Errorf("checkpoint: bad name %q", name)
	}
	u := *h.base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/" + name
	u.RawPath = ""
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("put checkpoint: %w", err)
	}
	req.Header.Set("Content-Type", "application/jose")
	req.Header.Set("If-None-Match", "*")
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("put checkpoint: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode == http.StatusPreconditionFailed || resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%w: %s", ErrExists, redact(u))
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("put checkpoint %s: %s: %s", redact(u), resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// redact drops the query (a pre-signed URL's credentials) from u for
// messages.
func redact(u url.URL) string {
	u.RawQuery = ""
	return u.String()
}
