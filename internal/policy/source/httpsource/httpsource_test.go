package httpsource_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source"
	"github.com/m1-agent/m1/internal/policy/source/httpsource"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
)

// server is a bundle server: it serves the last published bundle as a
// .tar.gz with a strong ETag and answers If-None-Match with 304, as OPA's
// bundle servers (and nginx) do.
type server struct {
	mu      sync.Mutex
	archive []byte
	etag    string
	auth    string // the last Authorization header seen
	srv     *httptest.Server
	addr    string
}

func newServer(t *testing.T) *server {
	s := &server{}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	s.addr = s.srv.Listener.Addr().String()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	archive, etag := s.archive, s.etag
	s.auth = r.Header.Get("Authorization")
	s.mu.Unlock()
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "application/gzip")
	_, _ = w.Write(archive)
}

func (s *server) Publish(t *testing.T, files map[string]string) {
	t.Helper()
	m := map[string][]byte{}
	for k, v := range files {
		m[k] = []byte(v)
	}
	var buf bytes.Buffer
	if err := policy.WriteTarGz(&buf, m, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.archive, s.etag = buf.Bytes(), `"`+hex.EncodeToString(sum[:8])+`"`
}

func (s *server) Loader(t *testing.T, o policy.ReadOptions) source.Loader {
	t.Helper()
	opts := httpsource.DefaultOptions()
	opts.URL, opts.Read, opts.Token = s.srv.URL+"/bundles/m1.tar.gz", o, "s3cret"
	l, err := httpsource.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Down closes the listener; up listens on the same address again.
func (s *server) Down(t *testing.T) func() {
	t.Helper()
	s.srv.Listener.Close()
	s.srv.CloseClientConnections()
	return func() {
		l, err := net.Listen("tcp", s.addr)
		if err != nil {
			t.Fatalf("listen again on %s: %v", s.addr, err)
		}
		go func() { _ = s.srv.Config.Serve(l) }()
		t.Cleanup(func() { l.Close() })
	}
}

func TestConformance(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T) sourcetest.Fixture { return newServer(t) })
}

func TestBearerTokenAndETag(t *testing.T) {
	s := newServer(t)
	s.Publish(t, sourcetest.Bundle("one"))
	l := s.Loader(t, policy.ReadOptions{})
	res, err := l.Load(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	auth, etag := s.auth, s.etag
	s.mu.Unlock()
	if auth != "Bearer s3cret" {
		t.Errorf("Authorization sent = %q, want Bearer s3cret", auth)
	}
	if res.Tag != etag {
		t.Errorf("Load().Tag = %q, want the ETag %q", res.Tag, etag)
	}
	if _, err := l.Load(context.Background(), res.Tag); !errors.Is(err, source.ErrNotModified) {
		t.Errorf("Load(etag) error = %v, want ErrNotModified (a 304)", err)
	}
}

// TestHostile: a server that misbehaves or serves a hostile archive gives a
// clear error, quickly, and never a bundle.
func TestHostile(t *testing.T) {
	tarGz := func(entries ...entry) []byte { return archive(t, entries...) }
	good := tarGz(entry{name: "/authz.rego", body: []byte(sourcetest.Policy)})
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", 500) }, "server answered 500"},
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }, "server answered 404"},
		{"slow", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, "deadline exceeded"},
		{"slow body", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "100000")
			_, _ = w.Write(good[:10])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}, "deadline exceeded"},
		{"huge content-length", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000000000")
			_, _ = w.Write(good)
		}, "too large"},
		{"huge chunked body", func(w http.ResponseWriter, r *http.Request) {
			chunk := bytes.Repeat([]byte("x"), 64<<10)
			for range 64 { // 4 MiB, over the 1 MiB archive limit of the test
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}, "too large"},
		{"gzip bomb", serve(tarGz(entry{name: "/data.json", zeros: 64 << 20})), "too large"},
		{"many files bomb", serve(tarGz(
			entry{name: "/a/data.json", zeros: 600 << 10}, entry{name: "/b/data.json", zeros: 600 << 10},
		)), "too large"},
		{"dot-dot path", serve(tarGz(entry{name: "/authz.rego", body: []byte(sourcetest.Policy)}, entry{name: "../../etc/evil.rego", body: []byte("package evil")})), "unsafe path"},
		{"nested dot-dot", serve(tarGz(entry{name: "m1/../../x.rego", body: []byte("package x")})), "unsafe path"},
		{"symlink", serve(tarGz(entry{name: "/link.rego", link: "/etc/passwd"})), "unsafe path"},
		{"not gzip", serve([]byte("<html>hello</html>")), "not a gzip archive"},
		{"gzip not tar", serve(gz(t, []byte("just text, no tar"))), "not a tar archive"},
		{"tarball without policy", serve(tarGz(entry{name: "/README.md", body: []byte("hi")})), "no .rego modules"},
		{"rego syntax error", serve(tarGz(entry{name: "/authz.rego", body: []byte("package m1.authz\n\nallow if {")})), "rego_parse_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			opts := httpsource.DefaultOptions()
			opts.URL, opts.Timeout, opts.MaxArchiveBytes = srv.URL, 500*time.Millisecond, 1<<20
			opts.Read.MaxBytes = 1 << 20
			l, err := httpsource.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			res, err := l.Load(context.Background(), "")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load(%s) = %v, %v; want an error containing %q", tt.name, res.Bundle, err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), srv.URL) {
				t.Errorf("Load(%s) error %q does not name the URL", tt.name, err)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	for _, u := range []string{"", "ftp://x/b.tar.gz", "not a url", "http://"} {
		o := httpsource.DefaultOptions()
		o.URL = u
		if _, err := httpsource.New(o); err == nil {
			t.Errorf("New(URL %q) = nil error", u)
		}
	}
}

func serve(body []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(body) }
}

type entry struct {
	name  string
	body  []byte
	zeros int64  // a body of this many zero bytes, streamed
	link  string // a symlink to this target
}

func archive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		if e.zeros > 0 {
			h.Size = e.zeros
		}
		if e.link != "" {
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.zeros > 0 {
			if _, err := io.CopyN(tw, zeroReader{}, e.zeros); err != nil {
				t.Fatal(err)
			}
		} else if _, err := tw.Write(e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
