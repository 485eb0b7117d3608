package checkpoint_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/m1-agent/m1/internal/checkpoint"
	"github.com/m1-agent/m1/internal/checkpoint/checkpointtest"
)

func TestDir(t *testing.T) {
	checkpointtest.Run(t, func(t *testing.T) (checkpoint.Target, checkpointtest.Read) {
		dir := filepath.Join(t.TempDir(), "checkpoints")
		tg, err := checkpoint.NewDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return tg, func(t *testing.T, name string) ([]byte, bool) {
			b, err := os.ReadFile(filepath.Join(dir, name))
			return b, err == nil
		}
	})
}

// objectStore is a write-once HTTP object store, as a bucket with
// conditional writes is: PUT with If-None-Match: * answers 412 for a name
// that exists.
type objectStore struct {
	mu      sync.Mutex
	objects map[string][]byte
	token   string
}

func (s *objectStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+s.token {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/bucket/")
	s.mu.Lock()
	defer s.mu.Unlock()
	switch r.Method {
	case http.MethodPut:
		if r.Header.Get("If-None-Match") != "*" {
			http.Error(w, "conditional writes only", http.StatusBadRequest)
			return
		}
		if _, ok := s.objects[name]; ok {
			http.Error(w, "exists", http.StatusPreconditionFailed)
			return
		}
		b, _ := io.ReadAll(r.Body)
		s.objects[name] = b
	case http.MethodGet:
		b, ok := s.objects[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}
}

func TestHTTP(t *testing.T) {
	checkpointtest.Run(t, func(t *testing.T) (checkpoint.Target, checkpointtest.Read) {
		st := &objectStore{objects: map[string][]byte{}, token: "s3cret"}
		srv := httptest.NewServer(st)
		t.Cleanup(srv.Close)
		tg, err := checkpoint.Open(srv.URL+"/bucket/", "s3cret")
		if err != nil {
			t.Fatal(err)
		}
		return tg, func(t *testing.T, name string) ([]byte, bool) {
			st.mu.Lock()
			defer st.mu.Unlock()
			b, ok := st.objects[name]
			return b, ok
		}
	})
}
