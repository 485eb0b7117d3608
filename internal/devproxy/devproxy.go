// Package devproxy is a development stand-in for Envoy's ext_authz HTTP
// filter, for machines where Envoy cannot run: an HTTP reverse proxy that
// asks m1-authz (envoy.service.auth.v3.Authorization/Check over plaintext
// gRPC) before each request reaches the upstream tool, and applies the
// answer as Envoy would. It is NOT for production: it has no TLS, no
// HTTP/2, no retries, no connection limits and no hardening; deploy Envoy
// with deploy/envoy/envoy.yaml instead. See docs/DEV-PROXY.md.
//
// For each request the proxy buffers the body up to MaxRequestBytes
// (with_request_body.max_request_bytes), builds the CheckRequest with
// [envoy.FromHTTP] and [envoy.BuildCheckRequest] (the builder m1 check
// uses), and calls Check with a deadline of Timeout. Then:
//
//   - OK: the ok_response is applied to the upstream request (headers by
//     their append_action, headers_to_remove, query_parameters_to_set and
//     _remove) and to the upstream's response (response_headers_to_add);
//     the whole original body is forwarded and the response streamed back
//     (server-sent events included, flushed as they arrive);
//   - denied: the client gets denied_response's status (403 when unset),
//     headers and body; the upstream is not called;
//   - error_response, a gRPC error or the deadline (failure_mode_allow:
//     false): StatusOnError (403, Envoy's default status_on_error) with the
//     JSON body {"error":"authz_unavailable","reason":…}, logged.
//
// After each request the proxy sends the access-log entry Envoy's http_grpc
// access log of deploy/envoy would send to m1-authz's AccessLogService on
// the same address (AccessLog): the ext_authz dynamic metadata with the
// decision id, the x-m1-decision-id request header, the response code, the
// duration and the upstream failure flags, so that m1-authz records the
// tool's outcome.
//
// A body over MaxRequestBytes is cut to that size and sent with
// x-envoy-auth-partial-body: true when AllowPartial (allow_partial_message)
// is set — m1-authz denies that body_too_large on the MCP and tool paths;
// if a policy allows it elsewhere, the whole body is forwarded — and is
// answered 413 by the proxy itself, without a check, otherwise, as Envoy
// does.
package devproxy

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/m1-agent/m1/internal/envoy"
)

// Warning is logged when the proxy starts.
const Warning = "m1 dev-proxy is a development stand-in for Envoy's ext_authz filter: do not use it in production"

// Stable error codes of the answers the proxy writes itself.
const (
	CodeAuthzUnavailable    = "authz_unavailable"    // Check failed: gRPC error or deadline
	CodeBadRequest          = "bad_request"          // the request cannot be described to m1-authz
	CodeUpstreamUnavailable = "upstream_unavailable" // the upstream could not be reached
)

// Log field names.
const (
	fieldMethod     = "method"
	fieldPath       = "path"
	fieldDecision   = "decision"
	fieldStatus     = "status"
	fieldReason     = "reason"
	fieldDecisionID = "decision_id"
	fieldDuration   = "duration"
	fieldSkipped    = "skipped_headers"
	fieldListen     = "listen"
	fieldAuthz      = "authz"
	fieldUpstream   = "upstream"
)

// headerDecisionID is the header m1-authz sets on its answers.
const headerDecisionID = "x-m1-decision-id"

// Options configure a [Proxy].
type Options struct {
	// Listen is the HTTP listen address of [Proxy.Start].
	Listen string
	// AuthzAddr is m1-authz's ext_authz gRPC address (host:port).
	AuthzAddr string
	// AuthzTLS, when set, makes the gRPC connection to m1-authz TLS with
	// it (a sidecar with M1_TLS_CERT_FILE; with a client certificate for
	// M1_TLS_CLIENT_CA_FILE); nil is plaintext.
	AuthzTLS *tls.Config
	// Upstream is the URL of the tool the proxy forwards allowed requests
	// to (http or https; a path prefixes the request's path). Required.
	Upstream string
	// MaxRequestBytes is with_request_body.max_request_bytes: the most body
	// bytes sent to m1-authz.
	MaxRequestBytes int64
	// AllowPartial is with_request_body.allow_partial_message: a larger
	// body is cut and checked (true), or answered 413 without a check.
	AllowPartial bool
	// PackAsBytes is with_request_body.pack_as_bytes: the body goes in
	// raw_body instead of body.
	PackAsBytes bool
	// Timeout is the deadline of each Check (grpc_service.timeout).
	Timeout time.Duration
	// StatusOnError is the status the client gets when Check fails
	// (status_on_error).
	StatusOnError int
	// AccessLog sends each request's access-log entry to m1-authz's
	// AccessLogService at AuthzAddr, as deploy/envoy's access log does.
	AccessLog bool
	// Logger receives the start warning, one line per request, and errors.
	Logger *zap.Logger
}

// DefaultOptions returns the defaults: listen on 127.0.0.1:10000, m1-authz
// at 127.0.0.1:9191, 1 MiB bodies, partial bodies checked (m1-authz denies
// them), body as a string, 1 s per check (Envoy's deploy config says 0.5 s;
// a development sidecar gets more room), 403 on a failed check, access-log
// entries sent.
func DefaultOptions() Options {
	return Options{
		Listen:          "127.0.0.1:10000",
		AuthzAddr:       "127.0.0.1:9191",
		MaxRequestBytes: 1 << 20,
		AllowPartial:    true,
		Timeout:         time.Second,
		StatusOnError:   http.StatusForbidden,
		AccessLog:       true,
	}
}

// validate checks o and returns the parsed upstream URL.
func (o *Options) validate() (*url.URL, error) {
	if o.Upstream == "" {
		return nil, errors.New("devproxy: Upstream: required")
	}
	u, err := url.Parse(o.Upstream)
	if err != nil {
		return nil, fmt.Errorf("devproxy: Upstream %q: %w", o.Upstream, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("devproxy: Upstream %q: want an http:// or https:// URL with a host", o.Upstream)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("devproxy: Upstream %q: no query or fragment allowed", o.Upstream)
	}
	switch {
	case o.AuthzAddr == "":
		return nil, errors.New("devproxy: AuthzAddr: required")
	case o.MaxRequestBytes <= 0:
		return nil, fmt.Errorf("devproxy: MaxRequestBytes %d: must be positive", o.MaxRequestBytes)
	case o.Timeout <= 0:
		return nil, fmt.Errorf("devproxy: Timeout %v: must be positive", o.Timeout)
	case o.StatusOnError < 200 || o.StatusOnError > 599:
		return nil, fmt.Errorf("devproxy: StatusOnError %d: want an HTTP status 200-599", o.StatusOnError)
	}
	return u, nil
}

// Proxy is the development ext_authz proxy. It is an [http.Handler]; Start
// serves it on Options.Listen. Its methods are safe for concurrent use.
type Proxy struct {
	opts      Options
	upstream  *url.URL
	logger    *zap.Logger
	conn      *grpc.ClientConn
	authz     authv3.AuthorizationClient
	transport *http.Transport
	accessLog *accessLogger // nil without Options.AccessLog

	mu      sync.Mutex
	srv     *http.Server
	ln      net.Listener
	stopped bool
}

var _ http.Handler = (*Proxy)(nil)

// New validates opts and returns a proxy. It does not connect to m1-authz
// yet (gRPC connects on the first check) and does not listen until Start.
func New(opts Options) (*Proxy, error) {
	u, err := opts.validate()
	if err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if opts.AuthzTLS != nil {
		creds = credentials.NewTLS(opts.AuthzTLS)
	}
	conn, err := grpc.NewClient(opts.AuthzAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("devproxy: m1-authz at %s: %w", opts.AuthzAddr, err)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true // pass Accept-Encoding and bodies through untouched
	p := &Proxy{
		opts:      opts,
		upstream:  u,
		logger:    cmp.Or(opts.Logger, zap.NewNop()),
		conn:      conn,
		authz:     authv3.NewAuthorizationClient(conn),
		transport: t,
	}
	if opts.AccessLog {
		p.accessLog = newAccessLogger(conn, p.logger)
	}
	return p, nil
}

// Start logs the development-only warning, listens on Options.Listen and
// serves in the background until Stop.
func (p *Proxy) Start(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || p.srv != nil {
		return errors.New("devproxy: Start: already started or stopped")
	}
	p.logger.Warn(Warning)
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", p.opts.Listen)
	if err != nil {
		return fmt.Errorf("devproxy: listen %s: %w", p.opts.Listen, err)
	}
	p.ln = ln
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(p.logger),
	}
	p.logger.Info("m1 dev-proxy listening", zap.String(fieldListen, ln.Addr().String()),
		zap.String(fieldAuthz, p.opts.AuthzAddr), zap.String(fieldUpstream, p.upstream.String()))
	srv := p.srv
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.logger.Error("m1 dev-proxy serve", zap.Error(err))
		}
	}()
	return nil
}

// Addr is the address the proxy listens on, or nil before Start.
func (p *Proxy) Addr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

// Stop stops accepting requests, waits for those in flight until ctx ends
// (then closes their connections: a server-sent event stream never ends by
// itself) and closes the gRPC connection. Calling it again does nothing.
func (p *Proxy) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	p.stopped = true
	var errs []error
	if p.srv != nil {
		if err := p.srv.Shutdown(ctx); err != nil {
			_ = p.srv.Close()
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("devproxy: shutdown: %w", err))
			}
		}
	}
	p.transport.CloseIdleConnections()
	if p.accessLog != nil {
		p.accessLog.Close(ctx) // the entries of the requests served
	}
	if err := p.conn.Close(); err != nil {
		errs = append(errs, fmt.Errorf("devproxy: close gRPC connection: %w", err))
	}
	return errors.Join(errs...)
}

// ServeHTTP checks one request with m1-authz and forwards it, or answers
// the deny or the error.
func (p *Proxy) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	log := p.logger.With(zap.String(fieldMethod, r.Method), zap.String(fieldPath, r.URL.Path))
	w := &statusWriter{ResponseWriter: rw}
	x := &exchange{start: start}
	if v, ok := r.Header[http.CanonicalHeaderKey(headerDecisionID)]; ok && len(v) > 0 {
		x.idHeader = &v[0] // a client's own; an allow overwrites it
	}
	if p.accessLog != nil {
		defer func() { p.accessLog.Log(x.entry(r, w)) }()
	}

	body, partial, err := readBody(r.Body, p.opts.MaxRequestBytes)
	if err != nil {
		log.Info("read request body", zap.Error(err))
		writeJSON(w, http.StatusBadRequest, errorBody{Error: CodeBadRequest, Reason: "read request body: " + err.Error()})
		return
	}
	if partial && !p.opts.AllowPartial {
		// Envoy answers this itself, before any check.
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		_, _ = io.WriteString(w, "Payload Too Large")
		x.details = "request_payload_too_large"
		log.Info("request", zap.String(fieldDecision, "too_large"), zap.Int(fieldStatus, http.StatusRequestEntityTooLarge),
			zap.Duration(fieldDuration, time.Since(start)))
		return
	}

	checkBody := body
	if partial {
		checkBody = body[:p.opts.MaxRequestBytes]
	}
	req := envoy.FromHTTP(r, checkBody)
	req.PackAsBytes = p.opts.PackAsBytes
	creq, err := envoy.BuildCheckRequest(req)
	if err != nil {
		log.Info("build CheckRequest", zap.Error(err))
		writeJSON(w, http.StatusBadRequest, errorBody{Error: CodeBadRequest, Reason: err.Error()})
		return
	}
	hdrs := creq.GetAttributes().GetRequest().GetHttp().GetHeaders()
	if partial {
		hdrs[envoy.HeaderPartialBody] = "true"
	}

	ctx, cancel := context.WithTimeout(r.Context(), p.opts.Timeout)
	resp, err := p.authz.Check(ctx, creq)
	cancel()
	switch {
	case err != nil && r.Context().Err() != nil:
		log.Info("client went away during the check", zap.Error(err))
	case err != nil:
		x.details = "ext_authz_error"
		reason := fmt.Sprintf("m1-authz at %s: %s: %s", p.opts.AuthzAddr, status.Code(err), status.Convert(err).Message())
		log.Warn("check failed; denying (failure_mode_allow: false)", zap.String(fieldReason, reason))
		writeJSON(w, p.opts.StatusOnError, errorBody{Error: CodeAuthzUnavailable, Reason: reason})
	case resp.GetStatus().GetCode() == int32(codes.OK):
		id := decisionID(resp.GetOkResponse().GetHeaders())
		x.metadata, x.routed, x.idHeader, x.details = resp.GetDynamicMetadata(), true, &id, "via_upstream"
		skipped, upErr := p.forward(w, r, body, hdrs, resp.GetOkResponse())
		if upErr {
			x.upFailed, x.details = true, "upstream_reset_before_response_started"
		}
		fields := []zap.Field{zap.String(fieldDecision, "allow"), zap.String(fieldDecisionID, id),
			zap.Int(fieldStatus, w.status()), zap.Duration(fieldDuration, time.Since(start))}
		if len(skipped) > 0 {
			fields = append(fields, zap.Strings(fieldSkipped, skipped))
		}
		log.Info("request", fields...)
	case resp.GetErrorResponse() != nil:
		e := resp.GetErrorResponse()
		x.details = "ext_authz_error"
		code := cmp.Or(int(e.GetStatus().GetCode()), p.opts.StatusOnError)
		p.localReply(w, code, e)
		log.Warn("request", zap.String(fieldDecision, "error"), zap.Int(fieldStatus, code),
			zap.String(fieldReason, resp.GetStatus().GetMessage()), zap.Duration(fieldDuration, time.Since(start)))
	default:
		d := resp.GetDeniedResponse()
		x.metadata, x.denied, x.details = resp.GetDynamicMetadata(), true, "ext_authz_denied"
		code := cmp.Or(int(d.GetStatus().GetCode()), http.StatusForbidden)
		p.localReply(w, code, d)
		log.Info("request", zap.String(fieldDecision, "deny"), zap.Int(fieldStatus, code),
			zap.String(fieldReason, resp.GetStatus().GetMessage()), zap.String(fieldDecisionID, decisionID(d.GetHeaders())),
			zap.Duration(fieldDuration, time.Since(start)))
	}
}

// readBody reads at most limit bytes of body. partial reports that the body
// is longer; the rest stays unread in body.
func readBody(body io.Reader, limit int64) (b []byte, partial bool, err error) {
	if body == nil || body == http.NoBody {
		return nil, false, nil
	}
	b, err = io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(b)) > limit {
		// Envoy sends exactly max_request_bytes; the byte read beyond
		// the limit stays with the forwarded body.
		return b, true, nil
	}
	return b, false, nil
}

// forward sends the request upstream with the ok_response applied and
// streams the answer back. body is what was read of the request body
// (longer than the limit when partial); the rest is still in r.Body.
// upstreamErr reports that the upstream could not be reached.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, body []byte, checked map[string]string, ok *authv3.OkHttpResponse) (skipped []string, upstreamErr bool) {
	in := r.Clone(r.Context())
	in.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
	rp := &httputil.ReverseProxy{
		Transport:     p.transport,
		FlushInterval: -1, // flush every write: server-sent events stream through
		ErrorLog:      zap.NewStdLog(p.logger),
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(p.upstream)
			pr.Out.Host = pr.In.Host // Envoy keeps the client's authority
			// Envoy passes X-Forwarded-For/-Host through (use_remote_address
			// false), sets x-forwarded-proto and x-request-id when absent,
			// and tells the upstream whether the body it checked was cut.
			for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host"} {
				if v, ok := pr.In.Header[h]; ok {
					pr.Out.Header[h] = v
				}
			}
			pr.Out.Header.Set(envoy.HeaderForwardedProto, checked[envoy.HeaderForwardedProto])
			pr.Out.Header.Set(envoy.HeaderRequestID, checked[envoy.HeaderRequestID])
			pr.Out.Header.Del(envoy.HeaderPartialBody)
			if v, ok := checked[envoy.HeaderPartialBody]; ok {
				pr.Out.Header.Set(envoy.HeaderPartialBody, v)
			}
			skipped = append(skipped, applyOK(pr.Out, ok)...)
		},
		ModifyResponse: func(resp *http.Response) error {
			skipped = append(skipped, mutateHeaders(resp.Header, ok.GetResponseHeadersToAdd())...)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			upstreamErr = true
			p.logger.Warn("upstream", zap.String(fieldUpstream, p.upstream.String()), zap.Error(err))
			writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: CodeUpstreamUnavailable, Reason: err.Error()})
		},
	}
	rp.ServeHTTP(w, in)
	return skipped, upstreamErr
}

// localReply writes a denied_response (or error_response) as Envoy's local
// reply: text/plain when it has a body, then its headers, status and body.
func (p *Proxy) localReply(w http.ResponseWriter, code int, d *authv3.DeniedHttpResponse) {
	if d.GetBody() != "" {
		w.Header().Set("Content-Type", "text/plain")
	}
	if skipped := mutateHeaders(w.Header(), d.GetHeaders()); len(skipped) > 0 {
		p.logger.Info("skipped malformed deny headers", zap.Strings(fieldSkipped, skipped))
	}
	if code < 200 || code > 599 {
		code = http.StatusForbidden
	}
	w.WriteHeader(code)
	_, _ = io.WriteString(w, d.GetBody())
}

// decisionID is the x-m1-decision-id among m1-authz's headers, or "".
func decisionID(hs []*corev3.HeaderValueOption) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == headerDecisionID {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

// errorBody is the JSON of the answers the proxy writes itself, shaped like
// m1-authz's deny bodies.
type errorBody struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
