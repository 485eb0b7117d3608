package bench

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestRunModes: in approval mode every m1-authz call carries a fresh
// approval and is allowed (each used once, recorded in the sidecar's
// SQLite store); in grant mode one grant allows every call. A replayed
// approval or a miscounted grant would be denied and count as an error.
func TestRunModes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  string
		audit bool
		want  string
	}{
		{"approval", ModeApproval, true, "mode approval, audit on, uses in SQLite"},
		{"grant", ModeGrant, false, "mode grant, uses in SQLite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := smallOptions()
			o.Mode, o.Audit, o.Requests, o.Warmup = tc.mode, tc.audit, 600, 50
			rep, err := Run(t.Context(), o)
			if err != nil {
				t.Fatalf("Run(%s): %v", tc.mode, err)
			}
			for _, tg := range rep.Targets {
				if tg.Calls != 600 || tg.Errors != 0 {
					t.Errorf("Run(%s) %s = %d calls, %d errors %v; want 600 calls, no errors", tc.mode, tg.Name, tg.Calls, tg.Errors, tg.ErrorCounts)
				}
			}
			var buf bytes.Buffer
			if err := WriteTable(&buf, rep); err != nil || !strings.Contains(buf.String(), tc.want) {
				t.Errorf("WriteTable = %q, %v; want it to contain %q", buf.String(), err, tc.want)
			}
		})
	}
}

// TestRunTwoSidecarsOnRedis: two in-process sidecars share a Redis this
// run starts; the load is split between them, and a grant's uses and the
// approvals' single use are counted in Redis.
func TestRunTwoSidecarsOnRedis(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("SKIPPING: redis-server not installed (apt-get install -y redis-server)")
	}
	for _, mode := range []string{ModeApproval, ModeGrant} {
		o := smallOptions()
		o.Mode, o.Redis, o.Sidecars, o.Requests, o.Warmup = mode, "start", 2, 400, 40
		rep, err := Run(t.Context(), o)
		if err != nil {
			t.Fatalf("Run(%s, 2 sidecars): %v", mode, err)
		}
		m1 := rep.Targets[1]
		if m1.Sidecars != 2 || m1.Calls != 400 || m1.Errors != 0 || !rep.Redis || strings.Count(m1.Addr, ",") != 1 {
			t.Errorf("Run(%s, 2 sidecars) = %+v, want 2 sidecars on Redis, 400 calls, no errors", mode, m1)
		}
	}
}

func TestOptionsModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string // in the error; "" = valid
	}{
		{"unknown mode", func(o *Options) { o.Mode = "fast" }, "Mode (--mode)"},
		{"two sidecars without redis", func(o *Options) { o.Sidecars = 2 }, "needs Redis"},
		{"three sidecars", func(o *Options) { o.Sidecars, o.Redis = 3, "start" }, "Sidecars (--sidecars)"},
		{"remote redis", func(o *Options) { o.Redis = "redis://10.1.1.1:6379" }, "loopback"},
		{"addr without key", func(o *Options) { o.Addr, o.Mode = "127.0.0.1:9191", ModeApproval }, "KeyFile (--key)"},
		{"key without addr", func(o *Options) { o.KeyFile = "k.jwk" }, "for --addr"},
		{"two addrs", func(o *Options) { o.Addr = "127.0.0.1:9191,127.0.0.1:9291" }, ""},
		{"approval in-process", func(o *Options) { o.Mode = ModeApproval }, ""},
	} {
		o := DefaultOptions()
		tc.mod(&o)
		err := o.validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("validate(%s) = %v, want nil", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("validate(%s) = %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
}
