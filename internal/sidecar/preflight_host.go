package sidecar

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/store/backend"
	"github.com/m1-agent/m1/internal/store/sqlite"
)

// preflightTLS checks M1_TLS_CERT_FILE and M1_TLS_KEY_FILE as m1-authz
// loads them (the key must match the certificate), and every certificate
// of the chain against now: expired or not yet valid fails, expiring
// within certs.ExpiryWarning warns.
func preflightTLS(o Options, now time.Time) PreflightCheck {
	const name = "tls certificate"
	switch {
	case o.TLSCertFile == "" && o.TLSKeyFile == "":
		return okCheck(name, "not set (M1_TLS_CERT_FILE): both ports are plaintext")
	case o.TLSCertFile == "" || o.TLSKeyFile == "":
		return failCheck(name, errors.New("M1_TLS_CERT_FILE and M1_TLS_KEY_FILE go together: set both or neither"))
	}
	cert, err := certs.LoadKeyPair(o.TLSCertFile, o.TLSKeyFile)
	if err != nil {
		return failCheck(name, err)
	}
	leaf := cert.Leaf
	detail := fmt.Sprintf("%s: %s (%s)", o.TLSCertFile, leaf.Subject, strings.Join(certs.Names(leaf), ", "))
	if len(certs.Names(leaf)) == 0 {
		detail += "; no subject alternative name: clients that verify the server refuse it"
	}
	chain := []string{}
	notAfter, which := leaf.NotAfter, "it"
	for i, der := range cert.Certificate {
		c := leaf
		if i > 0 {
			if c, err = x509.ParseCertificate(der); err != nil {
				return failCheck(name, fmt.Errorf("%s: certificate %d of the chain: %w", o.TLSCertFile, i+1, err))
			}
			chain = append(chain, c.Subject.String())
		}
		if c.NotBefore.After(now) {
			return failCheck(name, fmt.Errorf("%s: %s is not valid before %s", detail, c.Subject, c.NotBefore.UTC().Format(time.RFC3339)))
		}
		if c.NotAfter.Before(notAfter) {
			notAfter, which = c.NotAfter, "its chain's "+c.Subject.String()
		}
	}
	return expiryCheck(name, detail, which, notAfter, now)
}

// expiryCheck is ok, warn (within certs.ExpiryWarning) or fail (expired)
// for a certificate that expires at notAfter.
func expiryCheck(name, detail, which string, notAfter, now time.Time) PreflightCheck {
	at := notAfter.UTC().Format(time.RFC3339)
	switch left := notAfter.Sub(now); {
	case left <= 0:
		return PreflightCheck{name, PreflightFail, fmt.Sprintf("%s; %s expired at %s", detail, which, at)}
	case left < certs.ExpiryWarning:
		return warnCheck(name, fmt.Sprintf("%s; %s expires in %s (%s), within %d days: renew it (m1-authz reloads the files by itself)",
			detail, which, days(left), at, int(certs.ExpiryWarning/(24*time.Hour))))
	default:
		return okCheck(name, fmt.Sprintf("%s; valid until %s (%s)", detail, at, days(left)))
	}
}

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Round(time.Minute).String()
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + " days"
}

// preflightClientCA checks M1_TLS_CLIENT_CA_FILE: it holds certificates,
// and they have not expired.
func preflightClientCA(o Options, now time.Time) PreflightCheck {
	const name = "tls client CA"
	if o.TLSClientCAFile == "" {
		return okCheck(name, "not set (M1_TLS_CLIENT_CA_FILE): gRPC asks for no client certificate")
	}
	if o.TLSCertFile == "" {
		return failCheck(name, errors.New("M1_TLS_CLIENT_CA_FILE needs M1_TLS_CERT_FILE and M1_TLS_KEY_FILE: mutual TLS is TLS first"))
	}
	_, cas, err := certs.LoadCAs(o.TLSClientCAFile)
	if err != nil {
		return failCheck(name, err)
	}
	var (
		subjects []string
		live     int
		first    = cas[0]
	)
	for _, c := range cas {
		subjects = append(subjects, c.Subject.String())
		if c.NotAfter.After(now) {
			live++
		}
		if c.NotAfter.Before(first.NotAfter) {
			first = c
		}
	}
	detail := fmt.Sprintf("%s: %d CA certificates (%s)", o.TLSClientCAFile, len(cas), strings.Join(subjects, "; "))
	if live == 0 {
		return failCheck(name, fmt.Errorf("%s; every one has expired: no client certificate can verify", detail))
	}
	return expiryCheck(name, detail, first.Subject.String(), first.NotAfter, now)
}

// Free space under M1_DATA_DIR: the audit spool grows there while the
// store is unreachable (about spoolEventBytes per decision), and the
// default SQLite store lives there.
const (
	diskFailBytes   = 100 << 20
	diskWarnBytes   = 1 << 30
	spoolEventBytes = 800
)

// statfsFunc reports the bytes available to an unprivileged user and the
// size of the file system holding dir.
type statfsFunc func(dir string) (avail, total uint64, err error)

// preflightDisk checks the free space of the file system of dir (or of
// its nearest existing parent: m1-authz creates it).
func preflightDisk(dir string, statfs statfsFunc) PreflightCheck {
	const name = "disk"
	probe := dir
	for {
		if _, err := os.Stat(probe); err == nil || filepath.Dir(probe) == probe {
			break
		}
		probe = filepath.Dir(probe)
	}
	avail, total, err := statfs(probe)
	if errors.Is(err, errors.ErrUnsupported) {
		return okCheck(name, "free space is not measured on this platform")
	}
	if err != nil {
		return failCheck(name, fmt.Errorf("M1_DATA_DIR %s: %w", dir, err))
	}
	pct := 0.0
	if total > 0 {
		pct = 100 * float64(avail) / float64(total)
	}
	detail := fmt.Sprintf("M1_DATA_DIR %s: %s free of %s (%.0f%%), room for about %d spooled decisions while the store is unreachable",
		dir, bytesIEC(avail), bytesIEC(total), pct, avail/spoolEventBytes)
	switch {
	case avail < diskFailBytes:
		return PreflightCheck{name, PreflightFail, detail + "; under " + bytesIEC(diskFailBytes) + ": the audit spool would soon have nowhere to go"}
	case avail < diskWarnBytes:
		return warnCheck(name, detail+"; under "+bytesIEC(diskWarnBytes))
	}
	return okCheck(name, detail)
}

// cacheEntryBytes estimates the memory of one L1 decision cache entry: the
// 32-byte key, the decision with its reason and headers, and the cache's
// own bookkeeping. TestCacheEntryBytes measures a realistic entry below it.
const cacheEntryBytes = 512

// memLimitFunc returns the memory limit of the process's cgroup and the
// file it was read from; limit 0 when there is none.
type memLimitFunc func() (limit uint64, source string, err error)

// cgroupMemoryLimit reads cgroup v2's memory.max, else cgroup v1's
// memory.limit_in_bytes (a value of 2^62 or more there means no limit).
func cgroupMemoryLimit() (uint64, string, error) {
	for _, f := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, f, err
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, f, nil
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, f, fmt.Errorf("%s: %q is not a byte count", f, s)
		}
		if n >= 1<<62 {
			return 0, f, nil
		}
		return n, f, nil
	}
	return 0, "", nil
}

// preflightMemory compares the decision cache's largest size with the
// memory limit: warn above half of it, fail at all of it (the process
// would be killed once the cache fills).
func preflightMemory(cacheSize int, limit memLimitFunc) PreflightCheck {
	const name = "memory"
	if cacheSize == 0 {
		return okCheck(name, "decision cache off (M1_CACHE_SIZE=0)")
	}
	est := uint64(cacheSize) * cacheEntryBytes
	cache := fmt.Sprintf("a full L1 decision cache takes about %s (M1_CACHE_SIZE %d × ~%d B)", bytesIEC(est), cacheSize, cacheEntryBytes)
	lim, src, err := limit()
	switch {
	case err != nil:
		return warnCheck(name, fmt.Sprintf("%s; the memory limit could not be read: %v", cache, err))
	case lim == 0 && src == "":
		return okCheck(name, cache+"; no cgroup memory limit found")
	case lim == 0:
		return okCheck(name, cache+"; no memory limit ("+src+")")
	}
	detail := fmt.Sprintf("%s of the memory limit %s (%s)", cache, bytesIEC(lim), src)
	switch {
	case est >= lim:
		return PreflightCheck{name, PreflightFail, detail + ": the process would be killed once the cache fills; lower M1_CACHE_SIZE or raise the limit"}
	case est > lim/2:
		return warnCheck(name, detail+": more than half of it, with the policy, the audit queue and the Go runtime still to fit; lower M1_CACHE_SIZE or raise the limit")
	}
	return okCheck(name, detail)
}

// bytesIEC formats n as 1.5 GiB, 300 MiB, 12 KiB.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// preflightSchema reads the store's schema against this binary's without
// changing the store (backend.Schema, before the audit store check
// migrates): a store this binary cannot run against fails, naming both
// versions, as m1-authz would refuse it at start.
func preflightSchema(ctx context.Context, o Options, timeout time.Duration) PreflightCheck {
	const name = "store schema" // audit on or off: the store keeps the security state
	kind, target, err := backend.Parse(o.DatabaseURL, o.DataDir)
	if err != nil {
		return failCheck(name, fmt.Errorf("M1_DATABASE_URL: %w", err))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := backend.Schema(ctx, o.DatabaseURL, o.DataDir)
	switch {
	case kind == backend.SQLite && errors.Is(err, fs.ErrNotExist):
		ms, merr := sqlite.Migrations()
		if merr != nil {
			return failCheck(name, merr)
		}
		return okCheck(name, fmt.Sprintf("no store yet at %s: m1-authz creates it at schema %d", target, ms[len(ms)-1].Version))
	case err != nil:
		return failCheck(name, fmt.Errorf("read the store's schema: %w", err))
	case st.Err() != nil:
		return failCheck(name, st.Err())
	}
	return okCheck(name, st.String())
}
