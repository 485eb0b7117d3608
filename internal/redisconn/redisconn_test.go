package redisconn

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/m1-agent/m1/internal/testenv"
)

// testOptions are fast settings for tests against loopback servers.
func testOptions(url string) Options {
	o := DefaultOptions()
	o.URL = url
	o.PingInterval = 20 * time.Millisecond
	o.CommandTimeout = 100 * time.Millisecond
	o.ConnectTimeout = 100 * time.Millisecond
	return o
}

// open builds and starts a Conn closed with the test; onChange, when not
// nil, is registered before the prober starts.
func open(t *testing.T, o Options, reg prometheus.Registerer, onChange ...func(bool)) *Conn {
	t.Helper()
	c, err := New(o, reg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, f := range onChange {
		c.OnStateChange(f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.Start(ctx)
	t.Cleanup(func() {
		cancel()
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

func TestSingleNodeHealth(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	reg := prometheus.NewRegistry()
	states := make(chan bool, 16)
	c := open(t, testOptions(srv.URL()), reg, func(up bool) { states <- up })
	gauge := func() float64 { return testutil.ToFloat64(c.metrics.connected) }
	expectState := func(want bool) {
		t.Helper()
		select {
		case got := <-states:
			if got != want {
				t.Fatalf("OnStateChange callback = %v, want %v", got, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("no OnStateChange(%v) callback", want)
		}
	}

	testenv.Eventually(t, 15*time.Second, "m1_redis_connected = 1", func() bool { return gauge() == 1 && c.Connected() })
	expectState(true)
	if c.RTT() <= 0 {
		t.Errorf("RTT() = %v after a successful probe, want > 0", c.RTT())
	}
	ctx := context.Background()
	if err := c.Client().Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if v, err := c.Client().Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET = %q, %v; want v", v, err)
	}

	srv.Stop(t)
	testenv.Eventually(t, 15*time.Second, "m1_redis_connected = 0", func() bool { return gauge() == 0 && !c.Connected() })
	expectState(false)

	srv.Start(t)
	testenv.Eventually(t, 15*time.Second, "m1_redis_connected = 1 again", func() bool { return gauge() == 1 && c.Connected() })
	expectState(true)
	if err := c.Client().Set(ctx, "k", "v2", time.Minute).Err(); err != nil {
		t.Fatalf("SET after restart: %v", err)
	}

	for _, name := range []string{"m1_redis_command_duration_seconds", "m1_redis_pool_hits_total", "m1_redis_pool_misses_total",
		"m1_redis_pool_timeouts_total", "m1_redis_pool_total_conns", "m1_redis_pool_idle_conns", "m1_redis_pool_stale_conns_total", "m1_redis_connected"} {
		if n := testutil.CollectAndCount(reg, name); n == 0 {
			t.Errorf("metric %s not exported", name)
		}
	}
	if n := testutil.CollectAndCount(c.metrics.duration); n < 3 { // ping, set, get
		t.Errorf("m1_redis_command_duration_seconds has %d series, want ping, set and get at least", n)
	}
}

// TestNewWhileDown: New and Start succeed without a server; the client
// connects when one appears.
func TestNewWhileDown(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	srv.Stop(t)
	c := open(t, testOptions(srv.URL()), nil)
	ctx := context.Background()
	if err := c.Client().Ping(ctx).Err(); err == nil {
		t.Fatal("PING with the server down: nil error")
	}
	if c.Connected() || c.RTT() != 0 {
		t.Fatalf("Connected() = %v, RTT() = %v with the server down; want false, 0", c.Connected(), c.RTT())
	}
	srv.Start(t)
	testenv.Eventually(t, 15*time.Second, "connected", c.Connected)
}

// TestCommandTimeout: with the server down or hung, a command fails
// instead of waiting. The bounds are sanity checks, not speed goals.
func TestCommandTimeout(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{Args: []string{"--enable-debug-command", "yes"}})
	o := testOptions(srv.URL())
	o.MaxRetries = 2
	c := open(t, o, nil)
	ctx := context.Background()
	if err := c.Client().Ping(ctx).Err(); err != nil {
		t.Fatalf("PING: %v", err)
	}
	// Worst case per attempt: a dial and a command, then the capped backoff.
	bound := time.Duration(o.MaxRetries+1)*(o.ConnectTimeout+o.CommandTimeout) + time.Duration(o.MaxRetries)*o.RetryDelayMax

	t.Run("hung server", func(t *testing.T) {
		// DEBUG SLEEP blocks the single-threaded server; our GET is read
		// by nobody until it wakes.
		blocker := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 5 * time.Second})
		defer blocker.Close()
		go blocker.Do(context.Background(), "DEBUG", "SLEEP", "2")
		testenv.Eventually(t, 15*time.Second, "server busy", func() bool { return testenv.Ping(srv.Addr) != nil })
		start := time.Now()
		err := c.Client().Get(ctx, "k").Err()
		took := time.Since(start)
		if err == nil || err == redis.Nil {
			t.Fatalf("GET on a hung server = %v, want a timeout error", err)
		}
		if took > bound+2*time.Second {
			t.Errorf("GET on a hung server took %v, want about %v at most", took, bound)
		}
		t.Logf("GET on a hung server failed after %v (bound %v): %v", took, bound, err)

		// A caller's deadline is honoured too.
		dctx, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		defer cancel()
		start = time.Now()
		err = c.Client().Get(dctx, "k").Err()
		if took := time.Since(start); err == nil || took > time.Second {
			t.Errorf("GET with a 30ms deadline on a hung server = %v after %v, want an error within ~30ms", err, took)
		}
		testenv.Eventually(t, 15*time.Second, "server awake", func() bool { return testenv.Ping(srv.Addr) == nil })
	})

	t.Run("stopped server", func(t *testing.T) {
		srv.Stop(t)
		start := time.Now()
		err := c.Client().Get(ctx, "k").Err()
		took := time.Since(start)
		if err == nil || err == redis.Nil {
			t.Fatalf("GET on a stopped server = %v, want an error", err)
		}
		if took > bound+2*time.Second {
			t.Errorf("GET on a stopped server took %v, want about %v at most", took, bound)
		}
		t.Logf("GET on a stopped server failed after %v (bound %v): %v", took, bound, err)
	})
}

func TestPassword(t *testing.T) {
	srv := testenv.StartRedis(t, testenv.RedisOptions{})
	setPassword(t, srv.Addr, "s3cr/et")
	for _, tt := range []struct {
		name string
		o    Options
		ok   bool
	}{
		{"url", Options{URL: "redis://:s3cr%2Fet@" + srv.Addr + "/2", DB: -1}, true},
		{"env overrides url", Options{URL: "redis://:wrong@" + srv.Addr, DB: -1, Password: "s3cr/et"}, true},
		{"wrong", Options{URL: "redis://:wrong@" + srv.Addr, DB: -1}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.o, nil, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Client().Ping(context.Background()).Err()
			if (err == nil) != tt.ok {
				t.Errorf("PING = %v, want ok = %v", err, tt.ok)
			}
		})
	}
}

// setPassword sets the default user's password on a running server.
func setPassword(t *testing.T, addr, pw string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	if err := c.ConfigSet(context.Background(), "requirepass", pw).Err(); err != nil {
		t.Fatalf("CONFIG SET requirepass: %v", err)
	}
}

func TestCluster(t *testing.T) {
	cl := testenv.StartRedisCluster(t, 3)
	c := open(t, testOptions("redis+cluster://"+strings.Join(cl.Addrs(), ",")), prometheus.NewRegistry())
	if _, ok := c.Client().(*redis.ClusterClient); !ok {
		t.Fatalf("Client() = %T, want *redis.ClusterClient", c.Client())
	}
	ctx := context.Background()
	const n = 60
	for i := range n {
		if err := c.Client().Set(ctx, fmt.Sprintf("key-%d", i), i, time.Minute).Err(); err != nil {
			t.Fatalf("SET key-%d: %v", i, err)
		}
	}
	for i := range n {
		v, err := c.Client().Get(ctx, fmt.Sprintf("key-%d", i)).Int()
		if err != nil || v != i {
			t.Fatalf("GET key-%d = %d, %v; want %d", i, v, err, i)
		}
	}
	// The keys are spread over the masters.
	holding := 0
	for _, addr := range cl.Addrs() {
		node := redis.NewClient(&redis.Options{Addr: addr})
		size, err := node.DBSize(ctx).Result()
		node.Close()
		if err != nil {
			t.Fatalf("DBSIZE on %s: %v", addr, err)
		}
		if size > 0 {
			holding++
		}
	}
	if holding < 2 {
		t.Errorf("keys landed on %d node(s), want them spread over several", holding)
	}
	testenv.Eventually(t, 15*time.Second, "cluster connected", c.Connected)
}

// TestSentinel runs a master and a Sentinel (redis-server --sentinel) that
// monitors it, both password-protected, and connects through the Sentinel.
func TestSentinel(t *testing.T) {
	master := testenv.StartRedis(t, testenv.RedisOptions{})
	setPassword(t, master.Addr, "datapw")
	port := startSentinel(t, master, "datapw", "sentpw")

	o := testOptions(fmt.Sprintf("redis+sentinel://:datapw@127.0.0.1:%d/mymaster/3", port))
	o.SentinelPassword = "sentpw"
	c := open(t, o, nil)
	ctx := context.Background()
	if err := c.Client().Set(ctx, "via-sentinel", "yes", time.Minute).Err(); err != nil {
		t.Fatalf("SET through the Sentinel: %v", err)
	}
	// The write reached the master, in database 3.
	direct := redis.NewClient(&redis.Options{Addr: master.Addr, Password: "datapw", DB: 3})
	defer direct.Close()
	if v, err := direct.Get(ctx, "via-sentinel").Result(); err != nil || v != "yes" {
		t.Fatalf("GET on the master, db 3 = %q, %v; want yes", v, err)
	}
	testenv.Eventually(t, 15*time.Second, "connected through the Sentinel", c.Connected)
}

// startSentinel starts redis-server --sentinel monitoring master and
// returns its port.
func startSentinel(t *testing.T, master *testenv.Redis, masterPW, sentinelPW string) int {
	t.Helper()
	bin := testenv.RequireBinary(t, "redis-server", "apt-get install -y redis-server")
	port := testenv.FreePort(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
logfile %s
requirepass %s
sentinel monitor mymaster 127.0.0.1 %d 1
sentinel auth-pass mymaster %s
sentinel down-after-milliseconds mymaster 5000
`, port, dir, filepath.Join(dir, "sentinel.log"), sentinelPW, master.Port, masterPW)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, conf, "--sentinel")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sentinel: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	sc := redis.NewSentinelClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(port), Password: sentinelPW})
	defer sc.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		addr, err := sc.GetMasterAddrByName(context.Background(), "mymaster").Result()
		if err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(master.Port) {
			return port
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(dir, "sentinel.log"))
			t.Fatalf("sentinel exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sentinel does not know the master after 10s: %v %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTLS serves Redis over TLS with a throwaway CA and connects with
// rediss://.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	roots := writeTLSFiles(t, dir)
	tlsPort := testenv.FreePort(t)
	srv := testenv.StartRedis(t, testenv.RedisOptions{Args: []string{
		"--tls-port", strconv.Itoa(tlsPort),
		"--tls-cert-file", filepath.Join(dir, "server.pem"),
		"--tls-key-file", filepath.Join(dir, "server-key.pem"),
		"--tls-ca-cert-file", filepath.Join(dir, "ca.pem"),
		"--tls-auth-clients", "no",
	}})
	_ = srv
	url := fmt.Sprintf("rediss://127.0.0.1:%d", tlsPort)

	t.Run("trusted", func(t *testing.T) {
		o := testOptions(url)
		o.TLSConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		c := open(t, o, nil)
		if err := c.Client().Set(context.Background(), "tls", "1", time.Minute).Err(); err != nil {
			t.Fatalf("SET over TLS: %v", err)
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		c := open(t, testOptions(url), nil) // system roots do not know the CA
		if err := c.Client().Ping(context.Background()).Err(); err == nil {
			t.Fatal("PING over TLS with an unknown CA succeeded")
		}
	})
	t.Run("REDIS_TLS with redis://", func(t *testing.T) {
		o := testOptions(fmt.Sprintf("redis://127.0.0.1:%d", tlsPort))
		o.TLS = true
		o.TLSConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		c := open(t, o, nil)
		if err := c.Client().Ping(context.Background()).Err(); err != nil {
			t.Fatalf("PING over TLS: %v", err)
		}
	})
}

// writeTLSFiles writes ca.pem, server.pem and server-key.pem (for
// 127.0.0.1) to dir and returns a pool holding the CA.
func writeTLSFiles(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "m1 test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey := key()
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write("ca.pem", "CERTIFICATE", caDER)
	write("server.pem", "CERTIFICATE", srvDER)
	write("server-key.pem", "EC PRIVATE KEY", keyDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool
}

func TestCloseTwiceWithoutStart(t *testing.T) {
	c, err := New(Options{URL: "redis://127.0.0.1:1", DB: -1}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	_ = c.Close()
	c.Start(context.Background()) // after Close: does nothing
}

func TestDuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := New(Options{URL: "redis://127.0.0.1:1", DB: -1}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := New(Options{URL: "redis://127.0.0.1:1", DB: -1}, reg, nil); err == nil {
		t.Fatal("second New on the same registry: nil error, want a registration error")
	}
}

func TestEWMA(t *testing.T) {
	c := &Conn{}
	ewma(&c.rtt, 800*time.Microsecond)
	if got := c.RTT(); got != 800*time.Microsecond {
		t.Fatalf("first sample: RTT = %v, want 800µs", got)
	}
	ewma(&c.rtt, 1600*time.Microsecond)
	if got := c.RTT(); got != 900*time.Microsecond {
		t.Fatalf("second sample: RTT = %v, want 900µs (1/8 of the way)", got)
	}
}
