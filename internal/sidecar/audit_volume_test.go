package sidecar

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/genproto/googleapis/rpc/code"

	"github.com/m1-agent/m1/internal/store"
	"github.com/m1-agent/m1/internal/store/backend"
)

// dirBytes is the size of the files in dir: the SQLite store, its WAL and
// the audit spool.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// toolCall is a REST call of tool with body, without a token.
func toolCall(tool, body string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "POST", Path: "/tools/" + tool, Host: "tools.local", Body: body},
	}}}
}

// Audit volume is bounded by what was allowed, not by what anyone sends
// (DESIGN §7). The issue: twenty-one unauthenticated, denied 1 MiB requests
// grew the data directory from 1.3 MB to 27.5 MB, because a denied call of
// a non-sensitive tool stored its arguments. Here as many denied 1 MiB
// calls, of every kind a caller can send without a token, go through the
// real sidecar and its SQLite store, and the data directory and the bytes
// stored stay about what as many small calls take.
func TestDeniedCallsDoNotGrowTheStore(t *testing.T) {
	o := testOptions(t)
	dataDir := o.DataDir
	const mib = 1 << 20
	pad := func(n int) string { return strings.Repeat("A", n) }
	body := func(prefix, suffix string) string { // exactly 1 MiB (M1_MAX_BODY_BYTES)
		return prefix + pad(mib-len(prefix)-len(suffix)) + suffix
	}
	dup := func(key string) string { return `{"` + key + `":1,"` + key + `":2}` }
	denied := []*authv3.CheckRequest{
		// write_file is non-sensitive: its arguments were stored on deny.
		toolCall("write_file", body(`{"path":"/w/x","content":"`, `"}`)),
		// A tool no registry entry names.
		toolCall("rm_rf", body(`{"path":"`, `"}`)),
		// A deny whose reason quotes the caller: a duplicate member name.
		toolCall("read_file", dup(pad((mib-len(dup("")))/2))),
	}

	// Round 1: the store's size after small traffic, as a baseline.
	s := startServer(t, o)
	c := checkClient(t, s)
	for i := range 3 {
		check(t, c, toolCall("write_file", fmt.Sprintf(`{"path":"/w/%d","content":"x"}`, i)), code.Code_PERMISSION_DENIED)
	}
	stop(t, s)
	before := dirBytes(t, dataDir)

	// Round 2: twenty-one denied 1 MiB calls on the same data directory.
	o = testOptions(t) // a fresh metrics registry
	o.DataDir = dataDir
	s = startServer(t, o)
	c = checkClient(t, s)
	const n = 21
	for i := range n {
		check(t, c, denied[i%len(denied)], code.Code_PERMISSION_DENIED)
	}
	stop(t, s)
	after := dirBytes(t, dataDir)

	// What the events hold: no arguments, bounded details.
	st, err := backend.Open(context.Background(), "", dataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var events, stored int64
	err = st.Events(context.Background(), store.Filter{}, func(e store.Event) error {
		events++
		stored += int64(len(e.Args) + len(e.Detail))
		if e.Decision == "deny" && len(e.Args) > 0 {
			t.Errorf("denied call %s (%s) stored %d bytes of arguments, want none", e.Tool, e.Reason, len(e.Args))
		}
		if e.ArgsSHA256 == "" && e.Reason == "policy_denied" {
			t.Errorf("denied call %s lost its args_sha256", e.Tool)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if events != n+3 {
		t.Fatalf("store holds %d events, want %d", events, n+3)
	}
	t.Logf("data directory: %d bytes after 3 small denied calls, %d after %d more denied 1 MiB calls (+%d); arguments and details stored: %d bytes",
		before, after, n, after-before, stored)
	// About 1 KB an event (docs/AUDIT.md), with room for SQLite's pages:
	// far below one of the bodies sent.
	if limit := int64(n) * 16 << 10; after-before > limit {
		t.Errorf("data directory grew by %d bytes for %d denied calls, want at most %d (the bodies were %d bytes)", after-before, n, limit, n*mib)
	}
	if limit := int64(n+3) * 2 << 10; stored > limit {
		t.Errorf("events hold %d bytes of arguments and details, want at most %d", stored, limit)
	}
}

// stop stops s and waits until its audit queue is flushed.
func stop(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
