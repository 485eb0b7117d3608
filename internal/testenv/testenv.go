// Package testenv starts the real servers that tests need (redis-server, a
// Redis Cluster) as child processes on free loopback ports, and stops them
// with the test. When a server binary is missing, tests fail with an install
// hint if CI is set, and skip loudly otherwise.
package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireBinary returns the path of the named binary, or ends the test:
// t.Fatal with the install hint under CI, t.Skip otherwise.
func RequireBinary(t testing.TB, name, hint string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s not found on PATH; install it: %s", name, hint)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPING (not in CI): " + msg)
	return ""
}

const redisHint = "apt-get install -y redis-server (make test and .ci/run do this when they can)"

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Redis is one redis-server process owned by a test.
type Redis struct {
	Addr string // 127.0.0.1:port
	Port int

	bin  string
	dir  string
	args []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// RedisOptions tune StartRedis.
type RedisOptions struct {
	Persist bool     // keep data across Stop/Start (appendonly); default: none, a restart comes back empty
	Args    []string // extra redis-server arguments, e.g. "--cluster-enabled", "yes"
	Port    int      // 0 = a free port
}

// StartRedis starts redis-server and registers its stop with t.Cleanup.
func StartRedis(t testing.TB, o RedisOptions) *Redis {
	t.Helper()
	bin := RequireBinary(t, "redis-server", redisHint)
	port := o.Port
	if port == 0 {
		port = FreePort(t)
	}
	dir := t.TempDir()
	args := []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	if o.Persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	args = append(args, o.Args...)
	r := &Redis{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port, bin: bin, dir: dir, args: args}
	r.Start(t)
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr }

// Start (re)starts the server on the same port and waits until it answers.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		return
	}
	cmd := exec.Command(r.bin, r.args...)
	cmd.Dir = r.dir
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	deadline := time.Now().Add(10 * time.Second)
	for {
		if Ping(r.Addr) == nil {
			return
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
			t.Fatalf("redis-server exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s not answering after 10s", r.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: a crash, not a clean shutdown) and waits
// for it to exit. Without Persist its data is gone.
func (r *Redis) Stop(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Errorf("redis-server did not exit")
	}
	r.cmd = nil
}

// Restart stops and starts the server on the same port.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Stop(t)
	r.Start(t)
}

// Ping sends a RESP PING to addr and expects +PONG (or a cluster/loading
// error that still proves the server is up).
func Ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// Cluster is a Redis Cluster of masters on loopback ports.
type Cluster struct {
	Nodes []*Redis
}

// Addrs lists the node addresses.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		out[i] = n.Addr
	}
	return out
}

// StartRedisCluster starts n (≥ 3) cluster-enabled redis-servers and joins
// them with redis-cli --cluster create (no replicas), waiting until every
// node reports the cluster ok (one node saying so is not enough: another
// may still answer CLUSTERDOWN).
func StartRedisCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	cli := RequireBinary(t, "redis-cli", redisHint)
	c := &Cluster{}
	for range n {
		c.Nodes = append(c.Nodes, StartRedis(t, RedisOptions{Args: []string{
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
		}}))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, node := range c.Nodes {
		for {
			out, _ := exec.Command(cli, "-h", "127.0.0.1", "-p", strconv.Itoa(node.Port), "cluster", "info").Output()
			if strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ok at %s after 20s: %s", node.Addr, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return c
}
