package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/m1-agent/m1/internal/devproxy"
)

const devProxyDescription = `Run a local stand-in for Envoy's ext_authz filter, for development where
Envoy cannot run. It is NOT for production: deploy Envoy with
deploy/envoy/envoy.yaml.

Every request to --listen is sent to m1-authz (Authorization/Check over gRPC
at --authz: plaintext to host:port, TLS to https://host:port or with
--ca-file/--cert-file, as for m1 check) exactly as Envoy's filter would send it, with the
body up to --max-request-bytes. An allowed request goes to --upstream with
m1-authz's header changes (the approval token and client-sent x-m1-* headers
removed, x-m1-decision-id set), its whole body, and the answer streamed back
(server-sent events included). A denied request gets m1-authz's status and
JSON body; when m1-authz cannot answer, --status-on-error with
{"error":"authz_unavailable"} (failure_mode_allow: false). After each
request, the access-log entry Envoy would send goes to m1-authz's
AccessLogService at --authz, so that it records the tool's outcome. See
docs/DEV-PROXY.md.

Runs until interrupted (SIGINT, SIGTERM). Exit status: 0 after an
interrupt, 2 on an error.`

func runDevProxy(ctx context.Context, c *cmdIO, args []string) int {
	fs := newFlagSet("dev-proxy", "m1 dev-proxy --upstream URL [flags]", devProxyDescription, nil)
	d := devproxy.DefaultOptions()
	listen := fs.String("listen", d.Listen, "HTTP listen `address` (host:port)")
	authzAddr := fs.String("authz", d.AuthzAddr, "m1-authz ext_authz gRPC `address`: host:port, or https://host:port for TLS")
	var tf tlsFlags
	tf.register(fs, true)
	upstream := fs.String("upstream", "", "`URL` of the tool that allowed requests go to (required)")
	maxBytes := fs.Int64("max-request-bytes", d.MaxRequestBytes, "most body `bytes` sent to m1-authz (with_request_body.max_request_bytes)")
	allowPartial := fs.Bool("allow-partial", d.AllowPartial, "check a longer body cut to --max-request-bytes, which m1-authz denies body_too_large (allow_partial_message); --allow-partial=false answers 413 without a check, as deploy/envoy does")
	packAsBytes := fs.Bool("pack-as-bytes", d.PackAsBytes, "send the body in raw_body, as deploy/envoy does (with_request_body.pack_as_bytes)")
	timeout := fs.Duration("timeout", d.Timeout, "deadline of each Check (grpc_service.timeout)")
	statusOnError := fs.Int("status-on-error", d.StatusOnError, "HTTP `status` when m1-authz cannot answer (status_on_error; deploy/envoy uses 503)")
	accessLog := fs.Bool("access-log", d.AccessLog, "send each request's access-log entry to m1-authz's AccessLogService at --authz, as deploy/envoy's http_grpc access log does (tool outcomes)")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info (one line per request), warn, error")
	if code, ok := parse(fs, c, args, 0, 0); !ok {
		return code
	}
	if *upstream == "" {
		code, _ := usageError(fs, c, errors.New("--upstream is required"))
		return code
	}
	logger, err := devProxyLogger(c.stderr, *logLevel)
	if err != nil {
		code, _ := usageError(fs, c, err)
		return code
	}
	defer func() { _ = logger.Sync() }()

	target, authzTLS, err := tf.grpcTarget(*authzAddr)
	if err != nil {
		code, _ := usageError(fs, c, err)
		return code
	}
	o := devproxy.Options{
		Listen:          *listen,
		AuthzAddr:       target,
		AuthzTLS:        authzTLS,
		Upstream:        *upstream,
		MaxRequestBytes: *maxBytes,
		AllowPartial:    *allowPartial,
		PackAsBytes:     *packAsBytes,
		Timeout:         *timeout,
		StatusOnError:   *statusOnError,
		AccessLog:       *accessLog,
		Logger:          logger,
	}
	p, err := devproxy.New(o)
	if err != nil {
		code, _ := usageError(fs, c, err)
		return code
	}
	if err := p.Start(ctx); err != nil {
		_ = p.Stop(context.WithoutCancel(ctx))
		return fail(c, "dev-proxy", err)
	}
	fmt.Fprintf(c.stdout, "m1 dev-proxy: http://%s -> %s (m1-authz at %s); interrupt to stop\n", p.Addr(), *upstream, *authzAddr)

	<-ctx.Done()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.Stop(stopCtx); err != nil {
		return fail(c, "dev-proxy", err)
	}
	return exitOK
}

// devProxyLogger is a human-readable logger to w at level.
func devProxyLogger(w io.Writer, level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	enc := zap.NewDevelopmentEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core), nil
}
