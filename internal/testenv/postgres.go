package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const postgresHint = "apt-get install -y postgresql (Debian's server binaries land in /usr/lib/postgresql/<version>/bin)"

// Postgres is one PostgreSQL server owned by a test: its own data directory
// in a temporary directory, listening on 127.0.0.1 and a free port, trust
// authentication, fsync off. When the test runs as root, initdb, pg_ctl and
// the server run as the postgres user through runuser.
type Postgres struct {
	Port int

	bin     string // the directory of initdb, pg_ctl, createdb
	dir     string // owned by the server's user: data/, the socket, the log
	asRoot  bool
	runuser string
	mu      sync.Mutex
	running bool
	dbs     atomic.Int64
}

// StartPostgres initializes a cluster, starts it and registers its stop and
// removal with t.Cleanup. Without PostgreSQL's binaries the test fails with
// an install hint under CI, and skips loudly otherwise.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	p := &Postgres{bin: postgresBin(t), Port: FreePort(t), asRoot: os.Geteuid() == 0}
	dir, err := os.MkdirTemp("", "m1-postgres-")
	if err != nil {
		t.Fatal(err)
	}
	p.dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	if p.asRoot {
		p.runuser = RequireBinary(t, "runuser", "apt-get install -y util-linux")
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL needs the postgres user (%v); install it: %s", err, postgresHint)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(dir, "data")
	p.run(t, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
	conf := fmt.Sprintf(`
listen_addresses = '127.0.0.1'
port = %d
unix_socket_directories = '%s'
fsync = off
full_page_writes = off
max_connections = 200
logging_collector = off
`, p.Port, dir)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(conf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	p.Start(t)
	t.Cleanup(func() { p.Stop(t) })
	return p
}

// DSN is the URL of the server's postgres database.
func (p *Postgres) DSN() string { return p.dsn("postgres") }

func (p *Postgres) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

// NewDatabase creates an empty database and returns its URL.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d", p.dbs.Add(1))
	out, err := exec.Command(filepath.Join(p.bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-U", "postgres", name).CombinedOutput()
	if err != nil {
		t.Fatalf("createdb %s: %v\n%s", name, err, out)
	}
	return p.dsn(name)
}

// Start (re)starts the server on the same port and data, and waits until it
// accepts connections.
func (p *Postgres) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return
	}
	p.run(t, "pg_ctl", "start", "-D", filepath.Join(p.dir, "data"), "-l", filepath.Join(p.dir, "postgres.log"), "-w", "-t", "60")
	p.running = true
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.Port))
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
			t.Fatalf("postgres on %s not accepting connections after 30s: %v\n%s", addr, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server in "immediate" mode, as a crash would (no
// checkpoint; the next Start recovers from the WAL), and waits until it has
// exited. Committed data survives.
func (p *Postgres) Stop(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return
	}
	p.run(t, "pg_ctl", "stop", "-D", filepath.Join(p.dir, "data"), "-m", "immediate", "-w", "-t", "60")
	p.running = false
}

// Restart stops and starts the server on the same port and data.
func (p *Postgres) Restart(t testing.TB) {
	t.Helper()
	p.Stop(t)
	p.Start(t)
}

// run runs one of PostgreSQL's programs, as the postgres user when root.
func (p *Postgres) run(t testing.TB, prog string, args ...string) {
	t.Helper()
	name, argv := filepath.Join(p.bin, prog), args
	if p.asRoot {
		name, argv = p.runuser, append([]string{"-u", "postgres", "--", name}, args...)
	}
	cmd := exec.Command(name, argv...)
	cmd.Dir = p.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(p.dir, "postgres.log"))
		t.Fatalf("%s %s: %v\n%s\n%s", prog, strings.Join(args, " "), err, out, log)
	}
}

// postgresBin finds the directory of initdb and pg_ctl: the newest
// /usr/lib/postgresql/<version>/bin (Debian), else PATH.
func postgresBin(t testing.TB) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return pgVersion(b) - pgVersion(a) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	if path, err := exec.LookPath("pg_ctl"); err == nil && isExec(filepath.Join(filepath.Dir(path), "initdb")) {
		return filepath.Dir(path)
	}
	msg := "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or on PATH; install them: " + postgresHint
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPING (not in CI): " + msg)
	return ""
}

// pgVersion reads the major version from /usr/lib/postgresql/<version>/bin.
func pgVersion(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
