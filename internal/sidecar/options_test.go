package sidecar

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/m1-agent/m1/internal/config"
)

// TestConfigurationDocMatchesFlags keeps docs/CONFIGURATION.md in step with
// the flags: every flag appears with its env variable and default.
func TestConfigurationDocMatchesFlags(t *testing.T) {
	doc, err := os.ReadFile("../../docs/CONFIGURATION.md")
	if err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	env := o.BindFlags(fs)
	for _, p := range config.DocMismatches(string(doc), fs, env) {
		t.Errorf("docs/CONFIGURATION.md: %s", p)
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := t.TempDir() + "/m1.yaml"
	if err := os.WriteFile(file, []byte("max-body-bytes: 100\npolicy-timeout: 1s\nmcp-path: /from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	env := o.BindFlags(fs)
	vars := map[string]string{"M1_MAX_BODY_BYTES": "200", "M1_POLICY_TIMEOUT": "2s", "M1_GRPC_ADDR": ""}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	if err := config.Load(fs, []string{"--config", file, "--max-body-bytes", "300"}, env, lookup); err != nil {
		t.Fatal(err)
	}
	if o.MaxBodyBytes != 300 || o.PolicyTimeout.String() != "2s" || o.MCPPath != "/from-file" || o.GRPCAddr != ":9191" {
		t.Fatalf("flag > env > file > default broken: max-body %d (want 300), timeout %s (want 2s), mcp-path %s (want /from-file), grpc-addr %s (want :9191)",
			o.MaxBodyBytes, o.PolicyTimeout, o.MCPPath, o.GRPCAddr)
	}
}

func TestConfigRejectsUnknownKey(t *testing.T) {
	file := t.TempDir() + "/m1.yaml"
	if err := os.WriteFile(file, []byte("max-body-byte: 100\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := DefaultOptions()
	fs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	env := o.BindFlags(fs)
	err := config.Load(fs, []string{"--config", file}, env, func(string) (string, bool) { return "", false })
	if err == nil || !strings.Contains(err.Error(), "max-body-byte") {
		t.Fatalf("Load(config with a typo) = %v, want an error naming the key", err)
	}
}

// Retention pruning runs hourly unless the operator says never (DESIGN §7).
func TestPruneDefaults(t *testing.T) {
	o := DefaultOptions()
	if o.PruneEvery != time.Hour {
		t.Errorf("default PruneEvery = %v, want 1h", o.PruneEvery)
	}
	o = testOptions(t)
	o.PruneEvery = 0
	if err := o.validate(); err != nil {
		t.Errorf("validate(PruneEvery 0, never) = %v, want it accepted", err)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(*Options)
		field string
	}{
		{"empty grpc addr", func(o *Options) { o.GRPCAddr = "" }, "M1_GRPC_ADDR"},
		{"relative mcp path", func(o *Options) { o.MCPPath = "mcp" }, "M1_MCP_PATH"},
		{"recv below body", func(o *Options) { o.GRPCMaxRecvBytes = 10 }, "M1_GRPC_MAX_RECV_BYTES"},
		{"zero body", func(o *Options) { o.MaxBodyBytes = 0 }, "M1_MAX_BODY_BYTES"},
		{"prefix without slash", func(o *Options) { o.ToolsPathPrefix = "/tools" }, "M1_TOOLS_PATH_PREFIX"},
		{"checkpoints without a key", func(o *Options) { o.Checkpoint.Out = "/tmp/cp" }, "M1_AUDIT_CHECKPOINT_KEY_FILE"},
		{"checkpoints too often", func(o *Options) {
			o.Checkpoint.Out, o.Checkpoint.KeyFile, o.Checkpoint.Every = "/tmp/cp", "k.jwk", time.Second
		}, "M1_AUDIT_CHECKPOINT_INTERVAL"},
		{"checkpoints without audit", func(o *Options) { o.Checkpoint.Out, o.Checkpoint.KeyFile, o.Audit = "/tmp/cp", "k.jwk", false }, "M1_AUDIT"},
		{"zero audit args", func(o *Options) { o.AuditMaxArgs = 0 }, "M1_AUDIT_MAX_ARGS_BYTES"},
		{"audit args over 4 MiB", func(o *Options) { o.AuditMaxArgs = 4<<20 + 1 }, "M1_AUDIT_MAX_ARGS_BYTES"},
		{"prune too often", func(o *Options) { o.PruneEvery = time.Second }, "M1_AUDIT_PRUNE_INTERVAL"},
		{"certificate without key", func(o *Options) { o.TLS.CertFile = "tls.crt" }, "M1_TLS_KEY_FILE"},
		{"verification key without a source", func(o *Options) { o.PolicyVerificationKey = "verify.pem" }, "M1_POLICY_VERIFICATION_KEY"},
		{"client CA without certificate", func(o *Options) { o.TLS.ClientCAFile = "ca.crt" }, "M1_TLS_CLIENT_CA_FILE"},
	}
	for _, tt := range tests {
		o := testOptions(t)
		tt.mod(&o)
		if err := o.validate(); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("validate(%s) = %v, want an error naming %s", tt.name, err, tt.field)
		}
	}
}

// The REDIS_*_MS settings land in the nested redisconn.Options as
// durations, and a value that is not a whole number of milliseconds is
// refused naming the flag.
func TestRedisMillisecondSettings(t *testing.T) {
	o := DefaultOptions()
	if o.Redis.CommandTimeout != 200*time.Millisecond || o.Redis.ConnectTimeout != 500*time.Millisecond || o.Redis.DB != -1 {
		t.Fatalf("defaults: %+v, want redisconn's (200ms per command, 500ms to connect, DB from the URL)", o.Redis)
	}
	fs := flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	env := o.BindFlags(fs)
	vars := map[string]string{"REDIS_COMMAND_TIMEOUT_MS": "300", "REDIS_RETRY_DELAY_MAX_MS": "1000", "REDIS_URL": "redis://127.0.0.1:6379"}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	if err := config.Load(fs, nil, env, lookup); err != nil {
		t.Fatal(err)
	}
	if o.Redis.CommandTimeout != 300*time.Millisecond || o.Redis.RetryDelayMax != time.Second || o.Redis.URL != "redis://127.0.0.1:6379" {
		t.Fatalf("after the environment: %+v", o.Redis)
	}
	o = DefaultOptions()
	fs = flag.NewFlagSet("m1-authz", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	env = o.BindFlags(fs)
	if err := config.Load(fs, []string{"--redis-command-timeout-ms", "0.5s"}, env, func(string) (string, bool) { return "", false }); err == nil || !strings.Contains(err.Error(), "redis-command-timeout-ms") {
		t.Fatalf("--redis-command-timeout-ms 0.5s = %v, want an error naming the flag", err)
	}
}
