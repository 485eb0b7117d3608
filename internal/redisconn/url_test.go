package redisconn

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		name string
		url  string
		want endpoint
	}{
		{"host only", "redis://cache", endpoint{topology: single, addrs: []string{"cache:6379"}}},
		{"host port db", "redis://cache:6380/3", endpoint{topology: single, addrs: []string{"cache:6380"}, db: 3}},
		{"trailing slash", "redis://cache:6380/", endpoint{topology: single, addrs: []string{"cache:6380"}}},
		{"password only", "redis://:s3cret@cache", endpoint{topology: single, addrs: []string{"cache:6379"}, password: "s3cret"}},
		{"user and escaped password", "redis://m1:p%40ss%3Aw%2Fd@cache/1", endpoint{topology: single, addrs: []string{"cache:6379"}, username: "m1", password: "p@ss:w/d", db: 1}},
		{"user only", "redis://m1@cache", endpoint{topology: single, addrs: []string{"cache:6379"}, username: "m1"}},
		{"tls", "rediss://cache:6380", endpoint{topology: single, addrs: []string{"cache:6380"}, tls: true}},
		{"scheme case", "REDIS://cache", endpoint{topology: single, addrs: []string{"cache:6379"}}},
		{"ipv6", "redis://[::1]:7000/2", endpoint{topology: single, addrs: []string{"[::1]:7000"}, db: 2}},
		{"ipv6 default port", "redis://[::1]", endpoint{topology: single, addrs: []string{"[::1]:6379"}}},
		{"sentinel", "redis+sentinel://s1:26379,s2:26380,s3/mymaster",
			endpoint{topology: sentinel, addrs: []string{"s1:26379", "s2:26380", "s3:26379"}, master: "mymaster"}},
		{"sentinel db and auth", "redis+sentinel://u:pw@s1/mymaster/4",
			endpoint{topology: sentinel, addrs: []string{"s1:26379"}, master: "mymaster", db: 4, username: "u", password: "pw"}},
		{"sentinel tls", "rediss+sentinel://s1/m/", endpoint{topology: sentinel, addrs: []string{"s1:26379"}, master: "m", tls: true}},
		{"cluster", "redis+cluster://n1:7000,n2:7001,[::1]:7002",
			endpoint{topology: cluster, addrs: []string{"n1:7000", "n2:7001", "[::1]:7002"}}},
		{"cluster one seed tls auth", "rediss+cluster://:pw@n1/", endpoint{topology: cluster, addrs: []string{"n1:6379"}, password: "pw", tls: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseURL(tt.url)
			if err != nil {
				t.Fatalf("parseURL(%q): %v", tt.url, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseURL(%q) = %+v, want %+v", tt.url, got, tt.want)
			}
		})
	}
}

func TestParseURLErrors(t *testing.T) {
	tests := []struct {
		name, url, wantErr string
	}{
		{"empty", "", "want scheme://"},
		{"no scheme", "cache:6379", "want scheme://"},
		{"unknown scheme", "http://cache", `unsupported scheme "http"`},
		{"unix", "unix:///tmp/redis.sock", "unsupported scheme"},
		{"query", "redis://cache?dial_timeout=3", "query parameters"},
		{"fragment", "redis://cache#x", "query parameters"},
		{"no host", "redis://", "no host"},
		{"no host with auth", "redis://:pw@/0", "no host"},
		{"empty host in list", "redis+cluster://n1,,n2", "empty host"},
		{"port only", "redis://:6379", "empty host name"},
		{"bad port", "redis://cache:http", `port "http"`},
		{"port zero", "redis://cache:0", `port "0"`},
		{"port too big", "redis://cache:65536", `port "65536"`},
		{"bare ipv6", "redis://::1", "needs brackets"},
		{"unclosed bracket", "redis://[::1", "unclosed"},
		{"junk after bracket", "redis://[::1]x", "after ]"},
		{"not an ip in brackets", "redis://[cache]:1", "not an IP"},
		{"two hosts single", "redis://a,b", "needs redis+cluster"},
		{"bad db", "redis://cache/x", `database "x"`},
		{"negative db", "redis://cache/-1", `database "-1"`},
		{"db with plus", "redis://cache/+1", `database "+1"`},
		{"extra path", "redis://cache/1/2", "too many segments"},
		{"sentinel no master", "redis+sentinel://s1", "no master name"},
		{"sentinel empty master", "redis+sentinel://s1//1", "no master name"},
		{"sentinel extra path", "redis+sentinel://s1/m/1/2", "too many segments"},
		{"cluster db", "redis+cluster://n1/1", "no databases"},
		{"bad escape", "redis://u:%zz@cache", "percent-encoding in the password"},
		{"unescaped slash in password", "redis://u:p/w@cache", "an @ after the first /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseURL(tt.url)
			if err == nil {
				t.Fatalf("parseURL(%q) = nil error, want one containing %q", tt.url, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), "REDIS_URL") {
				t.Errorf("parseURL(%q) error = %q, want REDIS_URL… containing %q", tt.url, err, tt.wantErr)
			}
		})
	}
}

// TestParseURLSecretNotLeaked: no error message carries the password, even
// for URLs too broken to parse.
func TestParseURLSecretNotLeaked(t *testing.T) {
	for _, u := range []string{
		"redis://u:hunter2@cache:http",
		"redis://u:hunter2@",
		"redis://u:hun?ter2@cache",
		"redis://u:hun/ter2@cache/x",
		"redis://u:hun#ter2@cache",
		"redis://u:%zzhunter2@cache",
		"http://u:hunter2@cache",
		"u:hunter2@cache",
	} {
		_, err := parseURL(u)
		if err == nil {
			t.Errorf("parseURL(%q) = nil error, want one", u)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "hun") {
			t.Errorf("parseURL(%q) error leaks the password: %q", u, err)
		}
	}
}

// TestParseURLMatchesGoRedis checks single-node URLs against go-redis's
// own ParseURL.
func TestParseURLMatchesGoRedis(t *testing.T) {
	for _, u := range []string{
		"redis://cache",
		"redis://cache:6380/3",
		"redis://:s3cret@cache",
		"redis://m1:p%40ss%3Aw%2Fd@cache/1",
		"rediss://m1:pw@cache:6390/15",
		"redis://[::1]:7000/2",
		"redis://[::1]",
	} {
		ours, err := parseURL(u)
		if err != nil {
			t.Fatalf("parseURL(%q): %v", u, err)
		}
		theirs, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("redis.ParseURL(%q): %v", u, err)
		}
		got := []any{ours.addrs[0], ours.username, ours.password, ours.db, ours.tls}
		want := []any{theirs.Addr, theirs.Username, theirs.Password, theirs.DB, theirs.TLSConfig != nil}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: ours %v, go-redis %v", u, got, want)
		}
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{"redis://cache:6379/0", `"redis://cache:6379/0"`},
		{"redis://u:pw@cache:6379/0", `"redis://***@cache:6379/0"`},
		{"redis+sentinel://:pw@s1,s2/m", `"redis+sentinel://***@s1,s2/m"`},
		{"redis://u:p/w@cache", `"redis://***@cache"`},
		{"cache:6379", `"cache:6379"`},
		{"u:pw@cache", "(unparseable, not shown)"},
	}
	for _, tt := range tests {
		if got := redact(tt.in); got != tt.want {
			t.Errorf("redact(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestOptionsUniversal(t *testing.T) {
	build := func(t *testing.T, o Options) *redis.UniversalOptions {
		t.Helper()
		if err := o.validate(); err != nil {
			t.Fatalf("validate: %v", err)
		}
		u, _, err := o.universal()
		if err != nil {
			t.Fatalf("universal: %v", err)
		}
		return u
	}
	t.Run("defaults", func(t *testing.T) {
		u := build(t, Options{URL: "redis://cache/2", DB: -1})
		if u.DB != 2 || u.MaxRetries != 3 || u.MinRetryBackoff != 8*time.Millisecond || u.MaxRetryBackoff != 512*time.Millisecond ||
			u.DialTimeout != 500*time.Millisecond || u.ReadTimeout != 200*time.Millisecond || u.WriteTimeout != 200*time.Millisecond ||
			!u.ContextTimeoutEnabled || u.DialerRetries != 1 || u.TLSConfig != nil || u.MasterName != "" || u.IsClusterMode {
			t.Errorf("defaults: got %+v", u)
		}
	})
	t.Run("overrides", func(t *testing.T) {
		u := build(t, Options{URL: "redis://:urlpw@cache/2", Password: "envpw", DB: 5, TLS: true, MaxRetries: -1,
			RetryDelay: time.Millisecond, RetryDelayMax: 2 * time.Millisecond, ConnectTimeout: time.Second, CommandTimeout: 3 * time.Second})
		if u.Password != "envpw" || u.DB != 5 || u.TLSConfig == nil || u.TLSConfig.MinVersion == 0 || u.MaxRetries != -1 ||
			u.MinRetryBackoff != time.Millisecond || u.MaxRetryBackoff != 2*time.Millisecond || u.DialTimeout != time.Second || u.ReadTimeout != 3*time.Second {
			t.Errorf("overrides: got %+v", u)
		}
	})
	t.Run("db zero is literal", func(t *testing.T) {
		if u := build(t, Options{URL: "redis://cache/2"}); u.DB != 0 {
			t.Errorf("DB = %d, want 0", u.DB)
		}
	})
	t.Run("rediss implies tls", func(t *testing.T) {
		if u := build(t, Options{URL: "rediss://cache", DB: -1}); u.TLSConfig == nil {
			t.Error("TLSConfig = nil, want one")
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		u := build(t, Options{URL: "redis+sentinel://:pw@s1,s2:26380/mymaster/1", DB: -1, SentinelPassword: "spw"})
		if u.MasterName != "mymaster" || !reflect.DeepEqual(u.Addrs, []string{"s1:26379", "s2:26380"}) || u.DB != 1 ||
			u.Password != "pw" || u.SentinelPassword != "spw" {
			t.Errorf("sentinel: got %+v", u)
		}
		c := redis.NewUniversalClient(u)
		defer c.Close()
		if _, ok := c.(*redis.Client); !ok {
			t.Errorf("sentinel options build %T, want a failover *redis.Client", c)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		u := build(t, Options{URL: "redis+cluster://n1", DB: -1})
		if !u.IsClusterMode || !reflect.DeepEqual(u.Addrs, []string{"n1:6379"}) {
			t.Errorf("cluster: got %+v", u)
		}
		c := redis.NewUniversalClient(u)
		defer c.Close()
		if _, ok := c.(*redis.ClusterClient); !ok {
			t.Errorf("cluster options build %T, want *redis.ClusterClient", c)
		}
	})
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{"no url", Options{}, "REDIS_URL is empty"},
		{"db", Options{URL: "redis://c", DB: -2}, "REDIS_DB"},
		{"retries", Options{URL: "redis://c", MaxRetries: -2}, "REDIS_MAX_RETRIES"},
		{"delay", Options{URL: "redis://c", RetryDelay: -1}, "REDIS_RETRY_DELAY_MS"},
		{"delay max", Options{URL: "redis://c", RetryDelayMax: -1}, "REDIS_RETRY_DELAY_MAX_MS"},
		{"delay max below", Options{URL: "redis://c", RetryDelay: time.Second, RetryDelayMax: time.Millisecond}, "REDIS_RETRY_DELAY_MAX_MS"},
		{"connect", Options{URL: "redis://c", ConnectTimeout: -1}, "REDIS_CONNECT_TIMEOUT_MS"},
		{"command", Options{URL: "redis://c", CommandTimeout: -1}, "REDIS_COMMAND_TIMEOUT_MS"},
		{"cluster db", Options{URL: "redis+cluster://c", DB: 3}, "REDIS_DB 3"},
		{"bad url", Options{URL: "redis://:pw@c:x"}, "REDIS_URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.o, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New(%s) error = %v, want one containing %q", tt.name, err, tt.wantErr)
			}
		})
	}
}
