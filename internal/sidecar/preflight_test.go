package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/testenv"
)

func TestPreflightDisk(t *testing.T) {
	const gib = 1 << 30
	dir := t.TempDir()
	tests := []struct {
		name         string
		dir          string
		avail, total uint64
		err          error
		want         string
		detail       string
	}{
		{"plenty", dir, 50 * gib, 100 * gib, nil, PreflightOK, "50.0 GiB free of 100.0 GiB (50%)"},
		{"under 1 GiB", dir, 512 << 20, 100 * gib, nil, PreflightWarn, "under 1.0 GiB"},
		{"under 100 MiB", dir, 50 << 20, 100 * gib, nil, PreflightFail, "nowhere to go"},
		{"data dir not created yet", filepath.Join(dir, "a", "b"), 50 * gib, 100 * gib, nil, PreflightOK, "room for about"},
		{"statfs fails", dir, 0, 0, errors.New("input/output error"), PreflightFail, "input/output error"},
		{"not measured here", dir, 0, 0, errors.ErrUnsupported, PreflightOK, "not measured"},
	}
	for _, tt := range tests {
		var probed string
		c := preflightDisk(tt.dir, func(d string) (uint64, uint64, error) { probed = d; return tt.avail, tt.total, tt.err })
		if c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) {
			t.Errorf("preflightDisk(%s) = %s %q, want %s containing %q", tt.name, c.Status, c.Detail, tt.want, tt.detail)
		}
		if probed != dir {
			t.Errorf("preflightDisk(%s) measured %s, want the nearest existing directory %s", tt.name, probed, dir)
		}
	}
	if avail, total, err := hostStatfs(dir); !errors.Is(err, errors.ErrUnsupported) && (err != nil || total == 0 || avail > total) {
		t.Errorf("hostStatfs(%s) = %d available of %d, %v; want a measure", dir, avail, total, err)
	}
}

func TestPreflightMemory(t *testing.T) {
	limit := func(n uint64, src string, err error) memLimitFunc {
		return func() (uint64, string, error) { return n, src, err }
	}
	const v2 = "/sys/fs/cgroup/memory.max"
	tests := []struct {
		name      string
		cacheSize int
		limit     memLimitFunc
		want      string
		detail    string
	}{
		{"cache off", 0, limit(64<<20, v2, nil), PreflightOK, "cache off"},
		{"well under half", 100_000, limit(512<<20, v2, nil), PreflightOK, "48.8 MiB (M1_CACHE_SIZE 100000 × ~512 B) of the memory limit 512.0 MiB"},
		{"over half", 300_000, limit(256<<20, v2, nil), PreflightWarn, "more than half"},
		{"over the limit", 1_000_000, limit(256<<20, v2, nil), PreflightFail, "killed once the cache fills"},
		{"no limit", 1_000_000, limit(0, v2, nil), PreflightOK, "no memory limit (" + v2 + ")"},
		{"no cgroup", 1_000_000, limit(0, "", nil), PreflightOK, "no cgroup memory limit found"},
		{"unreadable", 1000, limit(0, v2, errors.New("permission denied")), PreflightWarn, "permission denied"},
	}
	for _, tt := range tests {
		if c := preflightMemory(tt.cacheSize, tt.limit); c.Status != tt.want || !strings.Contains(c.Detail, tt.detail) {
			t.Errorf("preflightMemory(%s) = %s %q, want %s containing %q", tt.name, c.Status, c.Detail, tt.want, tt.detail)
		}
	}
}

// cacheEntryBytes, preflight's estimate of one L1 entry, holds a realistic
// decision: a policy reason and two headers, each entry its own strings.
func TestCacheEntryBytes(t *testing.T) {
	const n = 50_000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m, err := cache.NewMemory(cache.MemoryOptions{MaxEntries: n, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		m.Set(cache.Key(sha256.Sum256(b[:])), &policy.Decision{
			Allowed: i%2 == 0, HTTPStatus: 403,
			Reason: fmt.Sprintf("tool write_file needs an approval (call %d)", i),
			Headers: []policy.Header{
				{Key: "x-m1-risk", Value: fmt.Sprintf("write-%d", i%7)},
				{Key: "x-m1-policy", Value: fmt.Sprintf("rule-%d", i%13)},
			},
		})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / int64(m.Len())
	t.Logf("%d entries: %d bytes each on the heap", m.Len(), per)
	if per > cacheEntryBytes {
		t.Errorf("an L1 entry takes %d bytes, more than preflight's estimate cacheEntryBytes = %d", per, cacheEntryBytes)
	}
	runtime.KeepAlive(m)
}

func TestCgroupMemoryLimitOnThisHost(t *testing.T) {
	lim, src, err := cgroupMemoryLimit()
	t.Logf("cgroup memory limit %d from %q (%v)", lim, src, err)
	if err != nil && src == "" {
		t.Errorf("cgroupMemoryLimit() = %v without naming its file", err)
	}
}

func TestPreflightSchemaOfAFreshDirectory(t *testing.T) {
	o := testOptions(t)
	o.DataDir = filepath.Join(t.TempDir(), "new")
	if c := preflightSchema(context.Background(), o, 5*time.Second); c.Status != PreflightOK || !strings.Contains(c.Detail, "no store yet") {
		t.Errorf("preflightSchema(no store) = %+v, want ok: created at start", c)
	}
}

// The schema of a PostgreSQL store: empty, this binary's, newer.
func TestPreflightSchemaPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	o := testOptions(t)
	o.DatabaseURL = pg.NewDatabase(t)
	ctx := context.Background()
	if c := preflightSchema(ctx, o, 10*time.Second); c.Status != PreflightOK || !strings.Contains(c.Detail, ": empty") {
		t.Errorf("preflightSchema(empty database) = %+v, want ok: migrated at start", c)
	}
	st, err := backend.Open(ctx, o.DatabaseURL, o.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if c := preflightSchema(ctx, o, 10*time.Second); c.Status != PreflightOK || !strings.HasSuffix(c.Detail, ": current") {
		t.Errorf("preflightSchema(migrated database) = %+v, want ok", c)
	}
	conn, err := pgx.Connect(ctx, o.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')`); err != nil {
		t.Fatal(err)
	}
	if c := preflightSchema(ctx, o, 10*time.Second); c.Status != PreflightFail || !strings.Contains(c.Detail, "the store's schema is version 999") {
		t.Errorf("preflightSchema(newer database) = %+v, want fail naming both versions", c)
	}
}
