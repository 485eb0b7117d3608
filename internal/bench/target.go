package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"github.com/m1-agent/m1/internal/sidecar"
)

// noop is the baseline ext_authz server: it allows every request with an
// empty OkHttpResponse and does nothing else, so its figures are the cost of
// gRPC and the load generator alone.
type noop struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{
	Status:       &status.Status{},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
}

// Check allows the request.
func (noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// startGRPC serves srv as the Authorization service on a free 127.0.0.1
// port. The returned stop closes it at once.
func startGRPC(ctx context.Context, srv authv3.AuthorizationServer) (addr string, stop func(), err error) {
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("listen: %w", err)
	}
	s := grpc.NewServer()
	authv3.RegisterAuthorizationServer(s, srv)
	go s.Serve(lis) //nolint:errcheck // Serve returns when stop closes the listener
	return lis.Addr().String(), s.Stop, nil
}

// ServeNoop serves the no-op server on addr (a loopback host:port; port 0
// picks a free one) until ctx ends: `m1 bench --serve-noop`, the baseline
// in a process of its own. It writes the address it listens on, alone on
// a line, to w first.
func ServeNoop(ctx context.Context, addr string, w io.Writer) error {
	if err := loopbackAddr(addr, true); err != nil {
		return fmt.Errorf("serve the no-op server: %w", err)
	}
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("serve the no-op server: %w", err)
	}
	s := grpc.NewServer()
	authv3.RegisterAuthorizationServer(s, noop{})
	if _, err := fmt.Fprintln(w, lis.Addr().String()); err != nil {
		lis.Close()
		return fmt.Errorf("serve the no-op server: write its address: %w", err)
	}
	stop := context.AfterFunc(ctx, s.Stop)
	defer stop()
	if err := s.Serve(lis); err != nil && ctx.Err() == nil {
		return fmt.Errorf("serve the no-op server: %w", err)
	}
	return nil
}

// noopProcess is a no-op server in a child process (bin bench --serve-noop).
type noopProcess struct {
	addr   string // where it listens
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd.Wait returned
}

// startNoopProcess starts `bin bench --serve-noop 127.0.0.1:0` (bin is an
// m1 binary: `m1 bench --addr` passes its own executable) and waits for
// its address. The child's errors go to stderr.
func startNoopProcess(ctx context.Context, bin string, stderr io.Writer) (*noopProcess, error) {
	cmd := exec.Command(bin, "bench", "--serve-noop", "127.0.0.1:0")
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start the no-op server: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the no-op server: %w", err)
	}
	p := &noopProcess{cmd: cmd, exited: make(chan struct{})}
	line := make(chan string, 1)
	go func() { // reads stdout to its end before Wait, as os/exec requires
		r := bufio.NewReader(out)
		if l, err := r.ReadString('\n'); err == nil {
			line <- strings.TrimSpace(l)
		}
		_, _ = io.Copy(io.Discard, r)
		_ = cmd.Wait()
		close(p.exited)
	}()
	fail := func(why string) (*noopProcess, error) {
		p.stop()
		return nil, fmt.Errorf("start the no-op server (%s bench --serve-noop): %s", bin, why)
	}
	select {
	case l := <-line:
		if err := loopback(l); err != nil {
			return fail(fmt.Sprintf("its first line is not its address: %v", err))
		}
		p.addr = l
		return p, nil
	case <-p.exited:
		return fail("it exited: " + cmd.ProcessState.String())
	case <-time.After(10 * time.Second):
		return fail("no address within 10s")
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// stop ends the child and waits for it.
func (p *noopProcess) stop() { StopProcess(p.cmd.Process, p.exited, 5*time.Second) }

// StopProcess sends p SIGTERM and waits until exited is closed (by the
// goroutine that waits for p), killing p if it is still running after
// grace.
func StopProcess(p *os.Process, exited <-chan struct{}, grace time.Duration) {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = p.Kill()
		<-exited
	}
}

// m1Server is an in-process m1-authz with the embedded default policy and
// its decision cache on, and the registry its metrics are on.
type m1Server struct {
	srv     *sidecar.Server
	reg     *prometheus.Registry
	dataDir string
}

// m1Config is what an in-process m1-authz of a run is given.
type m1Config struct {
	audit    bool   // audit every decision (SQLite in its data directory)
	jwksFile string // approval verification keys; "" = none
	audience string
	redisURL string // shared state; "" = the store (SQLite, durable uses)
}

// startM1 starts m1-authz in-process on free 127.0.0.1 ports, logging
// nothing, auditing decisions only when c.audit (the audit writer shares
// the machine's cores; measure the decision path without it, then with).
// Its local state lives in a temporary directory, seeded as on a sidecar
// that has been running for an hour (SeedDataDir), that stop removes.
func startM1(ctx context.Context, c m1Config) (*m1Server, error) {
	dir, err := os.MkdirTemp("", "m1-bench-")
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := SeedDataDir(ctx, dir); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	reg := prometheus.NewRegistry()
	opts := sidecar.DefaultOptions()
	opts.GRPCAddr, opts.AdminAddr = "127.0.0.1:0", "127.0.0.1:0"
	opts.DataDir = dir
	opts.Audit = c.audit
	opts.JWKSFile, opts.Audience, opts.Redis.URL = c.jwksFile, c.audience, c.redisURL
	opts.Logger, opts.Registerer, opts.Gatherer = zap.NewNop(), reg, reg
	srv, err := sidecar.New(ctx, opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("m1-authz: %w", err)
	}
	if err := srv.Start(ctx); err != nil {
		_ = srv.Stop(ctx)
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start m1-authz: %w", err)
	}
	return &m1Server{srv: srv, reg: reg, dataDir: dir}, nil
}

// cacheable says whether the policy in force lets m1-authz cache decisions,
// and why not.
func (m *m1Server) cacheable() (bool, string) { return m.srv.Authz().Policy().Cacheable() }

// cacheCounts reads the decision cache's hit and miss counters.
func (m *m1Server) cacheCounts() (hits, misses uint64) {
	mfs, err := m.reg.Gather()
	if err != nil {
		return 0, 0
	}
	sum := func(ms []*dto.Metric) (n uint64) {
		for _, m := range ms {
			n += uint64(m.GetCounter().GetValue())
		}
		return n
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "m1_policy_cache_hits_total":
			hits = sum(mf.GetMetric())
		case "m1_policy_cache_misses_total":
			misses = sum(mf.GetMetric())
		}
	}
	return hits, misses
}

// stop shuts the server down, waiting for in-flight checks until ctx ends.
func (m *m1Server) stop(ctx context.Context) error {
	err := m.srv.Stop(ctx)
	if rerr := os.RemoveAll(m.dataDir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}
