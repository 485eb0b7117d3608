package redisconn

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// topology is the kind of deployment a REDIS_URL names.
type topology int

const (
	single topology = iota
	sentinel
	cluster
)

func (t topology) String() string {
	switch t {
	case sentinel:
		return "sentinel"
	case cluster:
		return "cluster"
	}
	return "single"
}

// Default ports when a host in REDIS_URL has none.
const (
	defaultPort         = "6379"
	defaultSentinelPort = "26379"
)

// endpoint is a parsed REDIS_URL.
type endpoint struct {
	topology topology
	addrs    []string // host:port, at least one
	username string
	password string
	db       int    // 0 unless the URL names one
	master   string // sentinel only
	tls      bool   // rediss*
}

// schemes maps each accepted REDIS_URL scheme to its topology and TLS.
var schemes = map[string]struct {
	topology topology
	tls      bool
}{
	"redis":           {single, false},
	"rediss":          {single, true},
	"redis+sentinel":  {sentinel, false},
	"rediss+sentinel": {sentinel, true},
	"redis+cluster":   {cluster, false},
	"rediss+cluster":  {cluster, true},
}

// parseURL reads a REDIS_URL. The accepted forms are documented on
// Options.URL. Errors name REDIS_URL and never contain the credentials.
//
// The parser is our own rather than go-redis's ParseURL, ParseFailoverURL
// and ParseClusterURL: those take one host plus repeated ?addr= parameters
// and accept dozens of query options that would silently contradict the
// REDIS_* settings. Here a host list is comma-separated, the same in every
// form, and a query string is an error. For single-node URLs the result is
// the same as go-redis ParseURL's (the tests check it).
func parseURL(raw string) (endpoint, error) {
	var ep endpoint
	fail := func(format string, args ...any) (endpoint, error) {
		return endpoint{}, fmt.Errorf("REDIS_URL %s: %s", redact(raw), fmt.Sprintf(format, args...))
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return fail("want scheme://host[:port]…, e.g. redis://localhost:6379/0")
	}
	s, ok := schemes[strings.ToLower(scheme)]
	if !ok {
		return fail("unsupported scheme %q (want redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster)", scheme)
	}
	ep.topology, ep.tls = s.topology, s.tls

	if strings.ContainsAny(rest, "?#") {
		return fail("query parameters and fragments are not supported; use the REDIS_* settings")
	}
	authority, path, _ := strings.Cut(rest, "/")
	if strings.Contains(path, "@") {
		// Most likely a password with an unescaped "/": never echo the
		// pieces, they may be secret.
		return fail("an @ after the first /: percent-encode / ? # @ in the user name and password")
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		userinfo := authority[:at]
		authority = authority[at+1:]
		user, pass, hasPass := strings.Cut(userinfo, ":")
		var err error
		if ep.username, err = url.PathUnescape(user); err != nil {
			return fail("bad percent-encoding in the user name")
		}
		if hasPass {
			if ep.password, err = url.PathUnescape(pass); err != nil {
				return fail("bad percent-encoding in the password")
			}
		}
	}

	port := defaultPort
	if ep.topology == sentinel {
		port = defaultSentinelPort
	}
	if authority == "" {
		return fail("no host")
	}
	for h := range strings.SplitSeq(authority, ",") {
		addr, err := hostPort(h, port)
		if err != nil {
			return fail("host %q: %v", h, err)
		}
		ep.addrs = append(ep.addrs, addr)
	}
	if ep.topology == single && len(ep.addrs) > 1 {
		return fail("%d hosts: a host list needs redis+cluster:// or redis+sentinel://", len(ep.addrs))
	}

	var segs []string
	if path != "" {
		segs = strings.Split(path, "/")
		if segs[len(segs)-1] == "" { // one trailing slash is fine
			segs = segs[:len(segs)-1]
		}
	}
	if ep.topology == sentinel {
		if len(segs) == 0 || segs[0] == "" {
			return fail("no master name: want redis+sentinel://host:port[,host:port…]/mastername[/db]")
		}
		m, err := url.PathUnescape(segs[0])
		if err != nil {
			return fail("bad percent-encoding in the master name")
		}
		ep.master = m
		segs = segs[1:]
	}
	switch {
	case len(segs) == 0:
	case len(segs) > 1:
		return fail("path %q has too many segments", "/"+path)
	case ep.topology == cluster:
		return fail("a cluster has no databases: drop the path %q", "/"+path)
	default:
		db, err := strconv.Atoi(segs[0])
		if err != nil || db < 0 || segs[0] != strconv.Itoa(db) {
			return fail("database %q is not a non-negative integer", segs[0])
		}
		ep.db = db
	}
	return ep, nil
}

// hostPort validates one host of the list and adds the default port.
func hostPort(h, defPort string) (string, error) {
	if h == "" {
		return "", fmt.Errorf("empty host")
	}
	host, port := h, defPort
	switch {
	case strings.HasPrefix(h, "["):
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", fmt.Errorf("unclosed [")
		}
		host = h[1:end]
		switch after := h[end+1:]; {
		case after == "":
		case strings.HasPrefix(after, ":"):
			port = after[1:]
		default:
			return "", fmt.Errorf("unexpected %q after ]", after)
		}
		if net.ParseIP(host) == nil {
			return "", fmt.Errorf("%q is not an IP address", host)
		}
	case strings.Count(h, ":") > 1:
		return "", fmt.Errorf("an IPv6 address needs brackets: [addr]:port")
	case strings.Contains(h, ":"):
		host, port, _ = strings.Cut(h, ":")
	}
	if host == "" {
		return "", fmt.Errorf("empty host name")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return "", fmt.Errorf("port %q is not in 1..65535", port)
	}
	return net.JoinHostPort(host, port), nil
}

// redact returns raw with its userinfo masked, for error messages and logs.
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		if strings.Contains(raw, "@") {
			return "(unparseable, not shown)"
		}
		return strconv.Quote(raw)
	}
	// Mask up to the last @ anywhere: a password with an unescaped / ? or #
	// must not leak through a malformed URL either.
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = "***@" + rest[at+1:]
	}
	return strconv.Quote(scheme + "://" + rest)
}
