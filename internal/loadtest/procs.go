package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/m1-agent/m1/internal/bench"
)

// startTimeout bounds how long a started process may take to answer.
const startTimeout = 30 * time.Second

// proc is a child process of the load test: its output is kept (the last
// part) for error messages, and its first stdout line (the listen address
// of the demo tool and the dev proxy) is handed to firstLine.
type proc struct {
	name   string
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    bytes.Buffer
	first  chan string
	exited chan struct{}
}

// maxOutput is how much of a process's output is kept.
const maxOutput = 64 << 10

// startProc starts bin with args and env (over a minimal environment: the
// caller's M1_* settings must not leak into the processes measured).
func startProc(name, bin string, args, env []string) (*proc, error) {
	p := &proc{name: name, first: make(chan string, 1), exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(baseEnv(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = writerFunc(p.keep)
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			p.keep([]byte(line + "\n"))
			select {
			case p.first <- strings.TrimSpace(line):
			default:
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) keep(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out.Len() > maxOutput {
		tail := append([]byte(nil), p.out.Bytes()[p.out.Len()-maxOutput/2:]...)
		p.out.Reset()
		p.out.Write(tail)
	}
	p.out.Write(b)
}

// output is what the process wrote (the last part).
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// firstLine waits for the first stdout line.
func (p *proc) firstLine(ctx context.Context) (string, error) {
	select {
	case l := <-p.first:
		return l, nil
	case <-p.exited:
		return "", fmt.Errorf("%s exited: %s", p.name, lastLines(p.output(), 10))
	case <-time.After(startTimeout):
		return "", fmt.Errorf("%s printed nothing within %v: %s", p.name, startTimeout, lastLines(p.output(), 10))
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// waitHTTP polls url until it answers 200.
func (p *proc) waitHTTP(ctx context.Context, url string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		if resp, err := c.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %s", p.name, lastLines(p.output(), 10))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not ready within %v: %s", p.name, url, startTimeout, lastLines(p.output(), 10))
		}
	}
}

// stop sends SIGTERM and waits (SIGKILL after 10s).
func (p *proc) stop() { bench.StopProcess(p.cmd.Process, p.exited, 10*time.Second) }

type writerFunc func([]byte)

func (f writerFunc) Write(b []byte) (int, error) { f(b); return len(b), nil }

// baseEnv is the environment of the processes started: PATH, HOME and
// TMPDIR of this one, nothing else.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Binaries are the programs the load test starts.
type Binaries struct {
	Authz        string // m1-authz
	CLI          string // m1 (dev-proxy, keys gen)
	Orchestrator string // m1-orchestrator
	DemoTool     string // m1-demo-tool
}

// FindBinaries looks for the programs in dir, else beside the running
// executable, else on PATH. A missing one is an error naming it.
func FindBinaries(dir string) (Binaries, error) {
	var dirs []string
	if dir != "" {
		dirs = append(dirs, dir)
	} else if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	find := func(name string) (string, error) {
		for _, d := range dirs {
			p := filepath.Join(d, name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
		if dir == "" {
			if p, err := exec.LookPath(name); err == nil {
				return p, nil
			}
		}
		return "", fmt.Errorf("%s not found in %s or on PATH: run make build, or pass --bin DIR", name, strings.Join(dirs, ", "))
	}
	var b Binaries
	var errs []error
	for _, x := range []struct {
		dst  *string
		name string
	}{{&b.Authz, "m1-authz"}, {&b.CLI, "m1"}, {&b.Orchestrator, "m1-orchestrator"}, {&b.DemoTool, "m1-demo-tool"}} {
		p, err := find(x.name)
		*x.dst = p
		errs = append(errs, err)
	}
	return b, errors.Join(errs...)
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procUsage is a process's CPU time and memory, read from /proc.
type procUsage struct {
	cpu     time.Duration // user + system
	rss     int64         // bytes
	peakRSS int64         // bytes (VmHWM)
	ok      bool
}

// readUsage reads /proc/<pid>/stat (utime, stime) and /proc/<pid>/status
// (VmRSS, VmHWM). ok is false where /proc is not there.
func readUsage(pid int) procUsage {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procUsage{}
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procUsage{}
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3 (state)
	if len(f) < 13 {
		return procUsage{}
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15
	u := procUsage{cpu: time.Duration(ut+st) * time.Second / clockTicks, ok: true}
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return u
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb := func() int64 {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
		switch k {
		case "VmRSS":
			u.rss = kb()
		case "VmHWM":
			u.peakRSS = kb()
		}
	}
	return u
}
