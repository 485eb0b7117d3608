package test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/policy/source/sourcetest"
	"github.com/m1-agent/m1/internal/testenv"
)

// revisionPolicy allows list_dir (revision "v1") or denies it with the
// reason "denied_by_<rev>".
func revisionPolicy(rev string, allowListDir bool) map[string]string {
	decision := `{"allowed": true}`
	if !allowListDir {
		decision = `{"allowed": false, "reason": "denied_by_` + rev + `", "http_status": 403}`
	}
	return map[string]string{
		".manifest": `{"revision": "` + rev + `"}`,
		"authz.rego": `package m1.authz

import rego.v1

default decision := {"allowed": false, "reason": "default_deny", "http_status": 403}

decision := ` + decision + ` if input.m1.tool == "list_dir"
`,
	}
}

// decides polls Check(rest list_dir) until it gives w, or fails after d.
// It returns how long that took.
func (s *sidecar) decides(t *testing.T, w want, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	req := request(t, restList)
	for {
		got, _, err := outcome(s.check(t, req), true)
		if err == nil && got == w {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("Check(rest list_dir) = %v (%v) after %v, want %v; stderr:\n%s", got, err, d, w, s.log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *sidecar) policyHealth(t *testing.T) (status, detail string, info map[string]any) {
	t.Helper()
	_, doc := s.health(t)
	c := doc.Checks["policy"]
	return c.Status, c.Detail, c.Info
}

// TestPolicyDirReload: a directory edit flips a decision within 2 s; a
// broken revision keeps the old decisions and /health says why; the next
// good revision clears it; SIGHUP reloads too.
func TestPolicyDirReload(t *testing.T) {
	t.Parallel()
	dir := writeBundle(t, revisionPolicy("v1", true))
	s := startSidecar(t, []string{"--policy-dir", dir})
	s.decides(t, allow, checkTimeout)

	sourcetest.WriteDir(t, dir, revisionPolicy("v2", false))
	took := s.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), 2*time.Second)
	t.Logf("directory edit decided after %v", took)

	// A broken revision: parse error. Decisions stay v2's.
	broken := revisionPolicy("v3", true)
	broken["authz.rego"] += "\ndecision if {\n"
	sourcetest.WriteDir(t, dir, broken)
	testenv.Eventually(t, 10*time.Second, "/health checks.policy degraded", func() bool {
		st, _, _ := s.policyHealth(t)
		return st == "degraded"
	})
	st, detail, info := s.policyHealth(t)
	if !strings.Contains(detail, "rego_parse_error") || info["revision"] != "v2" {
		t.Errorf("/health checks.policy = %s %q revision %v; want the parse error and revision v2", st, detail, info["revision"])
	}
	expect(t, "list_dir under a broken revision", s.check(t, request(t, restList)), denyReason(403, "policy_denied", "denied_by_v2"))
	if n := s.metrics(t)["m1_policy_bundle_load_errors_total"]; n < 1 {
		t.Errorf("m1_policy_bundle_load_errors_total = %v, want ≥ 1", n)
	}
	if code, doc := s.health(t); code != http.StatusOK || doc.Status != "degraded" {
		t.Errorf("/health = %d %s, want 200 degraded (still ready)", code, doc.Status)
	}

	// SIGHUP reloads (the watch would too): v4 allows again.
	sourcetest.WriteDir(t, dir, revisionPolicy("v4", true))
	if err := s.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.decides(t, allow, 2*time.Second)
	if st, detail, info := s.policyHealth(t); st != "ok" || info["revision"] != "v4" {
		t.Errorf("/health checks.policy after a good revision = %s %q %v, want ok v4", st, detail, info["revision"])
	}
	if got := s.metrics(t)[`m1_policy_bundle_info{revision="v4"}`]; got != 1 {
		t.Errorf(`m1_policy_bundle_info{revision="v4"} = %v, want 1`, got)
	}
}

// bundleServer serves one bundle tarball with an ETag, as nginx does.
type bundleServer struct {
	mu      sync.Mutex
	archive []byte
	etag    string
	srv     *httptest.Server
}

func newBundleServer(t *testing.T, files map[string]string) *bundleServer {
	b := &bundleServer{}
	b.publish(t, files)
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		archive, etag := b.archive, b.etag
		b.mu.Unlock()
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		_, _ = w.Write(archive)
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func (b *bundleServer) publish(t *testing.T, files map[string]string) {
	m := map[string][]byte{}
	for k, v := range files {
		m[k] = []byte(v)
	}
	var buf bytes.Buffer
	if err := policy.WriteTarGz(&buf, m, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	b.mu.Lock()
	b.archive, b.etag = buf.Bytes(), `"`+hex.EncodeToString(sum[:8])+`"`
	b.mu.Unlock()
}

const pollInterval = 2 * time.Second

// withinPoll is one poll interval with its +10% jitter, plus what a
// loaded, race-instrumented test machine needs to fetch and prepare.
const withinPoll = pollInterval + pollInterval/10 + time.Second

// TestPolicyBundleServer: an update on the bundle server decides within one
// poll interval; a server that answers 500 keeps the old decisions.
func TestPolicyBundleServer(t *testing.T) {
	t.Parallel()
	b := newBundleServer(t, revisionPolicy("v1", true))
	s := startSidecar(t, []string{"--policy-bundle-url", b.srv.URL + "/m1.tar.gz", "--policy-poll-interval", pollInterval.String()})
	s.decides(t, allow, checkTimeout)
	b.publish(t, revisionPolicy("v2", false))
	took := s.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), withinPoll)
	t.Logf("bundle server update decided after %v (poll interval %v)", took, pollInterval)

	// Not a bundle: refused, v2 keeps deciding.
	b.mu.Lock()
	b.archive, b.etag = []byte("<html>maintenance</html>"), `"html"`
	b.mu.Unlock()
	testenv.Eventually(t, 3*withinPoll, "/health checks.policy degraded", func() bool {
		st, _, _ := s.policyHealth(t)
		return st == "degraded"
	})
	if _, detail, _ := s.policyHealth(t); !strings.Contains(detail, "not a gzip archive") {
		t.Errorf("/health detail = %q, want it to say the body is not a bundle", detail)
	}
	expect(t, "list_dir while the server serves garbage", s.check(t, request(t, restList)), denyReason(403, "policy_denied", "denied_by_v2"))
}

// TestPolicyGit: a commit to the followed branch decides within one poll
// interval.
func TestPolicyGit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	repo, err := git.PlainInitWithOptions(dir, &git.PlainInitOptions{InitOptions: git.InitOptions{DefaultBranch: plumbing.NewBranchReferenceName("main")}})
	if err != nil {
		t.Fatal(err)
	}
	commit := func(files map[string]string) {
		t.Helper()
		root := filepath.Join(dir, "policies")
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
		sourcetest.WriteDir(t, root, files)
		wt, err := repo.Worktree()
		if err != nil {
			t.Fatal(err)
		}
		if err := wt.AddWithOptions(&git.AddOptions{All: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := wt.Commit("policy", &git.CommitOptions{Author: &object.Signature{Name: "t", Email: "t@example.com", When: time.Now()}}); err != nil {
			t.Fatal(err)
		}
	}
	v1 := revisionPolicy("v1", true)
	delete(v1, ".manifest") // the revision is the commit id
	commit(v1)
	s := startSidecar(t, []string{"--policy-git-url", "file://" + dir, "--policy-git-path", "policies", "--policy-poll-interval", pollInterval.String()})
	s.decides(t, allow, checkTimeout)
	head, _ := repo.Head()
	if _, _, info := s.policyHealth(t); info["revision"] != head.Hash().String() {
		t.Errorf("/health revision = %v, want the commit id %s", info["revision"], head.Hash())
	}
	commit(revisionPolicy("v2", false))
	took := s.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), withinPoll)
	t.Logf("git commit decided after %v (poll interval %v)", took, pollInterval)
}

// TestPolicySigned: with a verification key, a bundle signed by m1 policy
// sign is accepted; a tampered one is refused and the signed one keeps
// deciding; an unsigned one does not start a directory sidecar.
func TestPolicySigned(t *testing.T) {
	t.Parallel()
	pub, priv := sourcetest.KeyPair(t)
	keys := t.TempDir()
	pubFile, privFile := filepath.Join(keys, "pub.pem"), filepath.Join(keys, "priv.pem")
	if err := os.WriteFile(pubFile, pub, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(privFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := writeBundle(t, revisionPolicy("v1", true))
	code, stderr := runToExit(t, []string{"--policy-dir", dir, "--policy-verification-key", pubFile})
	if code == 0 || !strings.Contains(stderr, "signature") {
		t.Errorf("unsigned bundle with a verification key: exit %d, stderr %q; want a failure naming the signature", code, lastLine(stderr))
	}
	if out, err := exec.Command(cliPath, "policy", "sign", dir, "--key", privFile, "--signatures").CombinedOutput(); err != nil {
		t.Fatalf("m1 policy sign: %v\n%s", err, out)
	}
	s := startSidecar(t, []string{"--policy-dir", dir, "--policy-verification-key", pubFile})
	s.decides(t, allow, checkTimeout)

	// Tamper: change the policy without re-signing.
	tampered := filepath.Join(dir, "authz.rego")
	src, _ := os.ReadFile(tampered)
	if err := os.WriteFile(tampered, bytes.ReplaceAll(src, []byte(`"list_dir"`), []byte(`"run_command"`)), 0o644); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "/health checks.policy degraded", func() bool {
		st, _, _ := s.policyHealth(t)
		return st == "degraded"
	})
	if _, detail, info := s.policyHealth(t); !strings.Contains(detail, "signature") || !strings.Contains(detail, "authz.rego") || info["revision"] != "v1" {
		t.Errorf("/health after tampering = %q revision %v; want a signature error naming authz.rego, v1 deciding", detail, info["revision"])
	}
	expect(t, "list_dir after tampering", s.check(t, request(t, restList)), allow)

	// A signed tarball on a bundle server is accepted too.
	out := filepath.Join(t.TempDir(), "bundle.tar.gz")
	v2 := writeBundle(t, revisionPolicy("v2", false))
	if b, err := exec.Command(cliPath, "policy", "sign", v2, "--key", privFile, "--out", out).CombinedOutput(); err != nil {
		t.Fatalf("m1 policy sign --out: %v\n%s", err, b)
	}
	archive, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(archive) }))
	t.Cleanup(srv.Close)
	s2 := startSidecar(t, []string{"--policy-bundle-url", srv.URL, "--policy-verification-key", pubFile})
	s2.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), checkTimeout)
}

// TestPolicyAnnounced: with Redis, a sidecar that activates a revision
// announces it, and another sidecar on the same bundle server fetches it
// at once instead of at its next poll (an hour away here).
func TestPolicyAnnounced(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	b := newBundleServer(t, revisionPolicy("v1", true))
	args := []string{"--policy-bundle-url", b.srv.URL, "--policy-poll-interval", "1h", "--redis-url", r.URL()}
	first, second := startSidecar(t, args), startSidecar(t, args)
	first.decides(t, allow, checkTimeout)
	second.decides(t, allow, checkTimeout)
	testenv.Eventually(t, 10*time.Second, "the second sidecar subscribed", func() bool {
		return second.metrics(t)["m1_redis_connected"] == 1
	})
	b.publish(t, revisionPolicy("v2", false))
	if err := first.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	first.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), 5*time.Second)
	took := second.decides(t, denyReason(403, "policy_denied", "denied_by_v2"), 5*time.Second)
	t.Logf("the second sidecar decided with the announced revision after %v", took)

	// The other way, and then a rollback to the revision the first one
	// announced: the second sidecar announces both.
	for _, rev := range []string{"v3", "v2"} {
		b.publish(t, revisionPolicy(rev, false))
		if err := second.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		want := denyReason(403, "policy_denied", "denied_by_"+rev)
		second.decides(t, want, 5*time.Second)
		took := first.decides(t, want, 5*time.Second)
		t.Logf("the first sidecar decided with %s, announced by the second, after %v", rev, took)
	}
}
