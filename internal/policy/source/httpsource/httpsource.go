// Package httpsource is the policy source of M1_POLICY_BUNDLE_URL: an OPA
// bundle server (or any static server) answering a .tar.gz bundle, fetched
// with If-None-Match so that an unchanged bundle costs a 304, and read with
// OPA's own bundle reader (policy.ReadTarGz).
package httpsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
)

// Options configure a Source.
type Options struct {
	// URL of the bundle (http or https; required).
	URL string
	// Token, when set, is sent as "Authorization: Bearer <Token>".
	Token string
	// Timeout bounds one fetch, the body included: a server that answers
	// slowly fails the fetch, it does not hold the reloader.
	Timeout time.Duration
	// MaxArchiveBytes bounds the body as downloaded.
	MaxArchiveBytes int64
	// Read bounds and verifies the bundle.
	Read policy.ReadOptions
	// Client is the HTTP client; nil means one with Timeout, no cookies,
	// and no redirect to another scheme than https from https.
	Client *http.Client
}

// DefaultOptions returns the defaults: a 30 s fetch timeout and
// policy.DefaultMaxArchiveBytes.
func DefaultOptions() Options {
	return Options{Timeout: 30 * time.Second, MaxArchiveBytes: policy.DefaultMaxArchiveBytes}
}

func (o Options) validate() error {
	u, err := url.Parse(o.URL)
	switch {
	case o.URL == "":
		return errors.New("httpsource: URL (M1_POLICY_BUNDLE_URL) is empty")
	case err != nil:
		return fmt.Errorf("httpsource: URL (M1_POLICY_BUNDLE_URL): %w", err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		return fmt.Errorf("httpsource: URL (M1_POLICY_BUNDLE_URL) %q: want an http or https URL", o.URL)
	case o.Timeout <= 0:
		return errors.New("httpsource: Timeout must be positive")
	case o.MaxArchiveBytes <= 0:
		return errors.New("httpsource: MaxArchiveBytes must be positive")
	}
	return nil
}

// Source fetches a bundle tarball over HTTP.
type Source struct {
	opts   Options
	client *http.Client
	where  string // the URL without user info, for messages
}

var _ source.Loader = (*Source)(nil)

// New returns a Source for o.URL; nothing is fetched yet.
func New(o Options) (*Source, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	c := o.Client
	if c == nil {
		c = &http.Client{Timeout: o.Timeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
				return errors.New("refusing a redirect from https to " + req.URL.Scheme)
			}
			return nil
		}}
	}
	u, _ := url.Parse(o.URL)
	u.User = nil
	return &Source{opts: o, client: c, where: u.Redacted()}, nil
}

// Load fetches the bundle. With tag (the last ETag) it asks
// If-None-Match, and a 304 gives ErrNotModified. Any status but 200 and
// 304, a body over MaxArchiveBytes, a fetch over Timeout, or a body that is
// not a bundle is an error naming the URL. The Result's Tag is the ETag,
// or the bundle revision when the server sends none.
func (s *Source) Load(ctx context.Context, tag string) (source.Result, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.opts.URL, nil)
	if err != nil {
		return source.Result{}, fmt.Errorf("fetch bundle %s: %w", s.where, err)
	}
	req.Header.Set("Accept", "application/gzip, application/octet-stream")
	if tag != "" {
		req.Header.Set("If-None-Match", tag)
	}
	if s.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.Token)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return source.Result{}, fmt.Errorf("fetch bundle %s: %w", s.where, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotModified:
		if tag != "" {
			return source.Result{}, source.ErrNotModified
		}
		return source.Result{}, fmt.Errorf("fetch bundle %s: 304 Not Modified to a request without If-None-Match", s.where)
	default:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return source.Result{}, fmt.Errorf("fetch bundle %s: server answered %s", s.where, resp.Status)
	}
	if resp.ContentLength > s.opts.MaxArchiveBytes {
		return source.Result{}, fmt.Errorf("fetch bundle %s: %w (%d bytes, limit %d)", s.where, policy.ErrTooLarge, resp.ContentLength, s.opts.MaxArchiveBytes)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.opts.MaxArchiveBytes+1))
	if err != nil {
		return source.Result{}, fmt.Errorf("fetch bundle %s: read body: %w", s.where, err)
	}
	if int64(len(body)) > s.opts.MaxArchiveBytes {
		return source.Result{}, fmt.Errorf("fetch bundle %s: %w (body over %d bytes)", s.where, policy.ErrTooLarge, s.opts.MaxArchiveBytes)
	}
	b, err := policy.ReadTarGz(body, s.opts.Read)
	if err != nil {
		return source.Result{}, fmt.Errorf("bundle %s: %w", s.where, err)
	}
	etag := resp.Header.Get("ETag")
	if etag == "" {
		etag = b.Digest
	}
	return source.Result{Bundle: b, Tag: etag}, nil
}
