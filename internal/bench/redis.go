package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a redis-server child process on a free loopback port with
// its files in a temporary directory, persistence off: the shared state of
// the sidecars a benchmark or load test starts.
type RedisServer struct {
	Addr string // 127.0.0.1:port
	cmd  *exec.Cmd
	dir  string
	done chan struct{}
}

// StartRedis starts redis-server (from PATH) and waits until it answers.
func StartRedis(ctx context.Context) (*RedisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH (apt-get install -y redis-server): %w", err)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "m1-redis-")
	if err != nil {
		return nil, err
	}
	r := &RedisServer{Addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, done: make(chan struct{})}
	r.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
		"--loglevel", "warning", "--logfile", filepath.Join(dir, "redis.log"))
	if err := r.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	c := redis.NewClient(&redis.Options{Addr: r.Addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c.Ping(ctx).Err() == nil {
			return r, nil
		}
		select {
		case <-r.done:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			os.RemoveAll(dir)
			return nil, fmt.Errorf("redis-server exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			r.Stop()
			return nil, errors.New("redis-server not answering after 10s")
		}
	}
}

// URL is the redis:// URL of the server.
func (r *RedisServer) URL() string { return "redis://" + r.Addr }

// Pid is the server's process id.
func (r *RedisServer) Pid() int { return r.cmd.Process.Pid }

// Stop kills the server, waits for it and removes its directory.
func (r *RedisServer) Stop() {
	_ = r.cmd.Process.Kill()
	<-r.done
	os.RemoveAll(r.dir)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
