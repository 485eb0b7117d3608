// Package sidecar wires m1-authz: the ext_authz gRPC server and Envoy's
// AccessLogService (tool outcomes), with gRPC health and reflection, and
// the admin HTTP server around the authz decision pipeline. Tests embed it
// in-process: New, Start, Addr, Stop.
package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/admin"
	"github.com/m1-agent/m1/internal/approval"
	"github.com/m1-agent/m1/internal/audit"
	"github.com/m1-agent/m1/internal/buildinfo"
	"github.com/m1-agent/m1/internal/cache"
	"github.com/m1-agent/m1/internal/cache/rediscache"
	"github.com/m1-agent/m1/internal/certs"
	"github.com/m1-agent/m1/internal/outcome"
	"github.com/m1-agent/m1/internal/policy"
	"github.com/m1-agent/m1/internal/redisconn"
	"github.com/m1-agent/m1/internal/state"
	"github.com/m1-agent/m1/internal/state/redisstate"
	"github.com/m1-agent/m1/internal/state/storestate"
	"github.com/m1-agent/m1/policies"
	"github.com/m1-agent/m1/toolcall"
)

// Server is one m1-authz process: New, then Start, then Stop.
type Server struct {
	opts     Options
	log      *zap.Logger
	authz    *authz.Service
	cache    *cache.Memory
	grpc     *grpc.Server
	health   *health.Server
	admin    *http.Server
	grpcLis  net.Listener
	adminLis net.Listener
	started  atomic.Bool
	draining atomic.Bool
	// serving runs the two servers: a listener that stops by itself ends
	// servingCtx with its error, and Serve stops the process with it.
	serving    *errgroup.Group
	servingCtx context.Context
	stopOnce   sync.Once
	stopErr    error
	done       chan struct{}

	tokenGenerated bool
	stopKeys       context.CancelFunc
	storeSink      *audit.LazySink         // the store: security state and audit trail
	storePingErr   error                   // the store's answer at New (checkStore)
	store          stateStore              // durable (storestate), or Redis-backed with durable revocations
	epoch          authz.Epoch             // the state epoch of store
	durable        *storestate.Store       // nil with REDIS_URL
	revs           *storestate.Revocations // with REDIS_URL: revocations kept in the store too
	stopState      context.CancelFunc
	redis          *redisconn.Conn // nil without REDIS_URL
	shared         *redisstate.Store
	l2             *rediscache.Cache
	tiered         *cache.Tiered
	stopRedis      context.CancelFunc
	stopPrune      context.CancelFunc
	stopEpoch      context.CancelFunc
	epochDone      chan struct{}     // closed when watchEpoch returns
	audit          *audit.Recorder   // nil when M1_AUDIT=false
	outcomes       *outcome.Server   // tool outcomes from Envoy's access log
	auditWriter    string            // this process's audit chain
	checkpoints    *checkpointer     // nil without M1_AUDIT_CHECKPOINT_OUT
	keys           *approval.Watcher // nil without a JWKS file
	verifier       *approval.Verifier
	policy         *policySources
	tls            *certs.Reloader // nil without M1_TLS_CERT_FILE
	ring           *admin.Ring     // the dashboard's history of this process
	stopRing       context.CancelFunc
}

// New loads and prepares the policy bundle and builds the servers. A broken
// bundle is an error naming the file and line.
func New(ctx context.Context, opts Options) (*Server, error) {
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	m, err := authz.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if err := buildinfo.RegisterMetric(opts.Registerer, opts.Version, buildinfo.Revision()); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	pm, err := newPolicyMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	sm, err := authz.NewShadowMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	s := &Server{opts: opts, log: opts.Logger, done: make(chan struct{})}
	s.policy = &policySources{metrics: pm}
	if err := s.setupKeys(); err != nil {
		return nil, err
	}
	if err := s.setupTLS(); err != nil {
		return nil, err
	}
	if err := s.setupStore(); err != nil {
		return nil, err
	}
	if err := s.checkStore(ctx); err != nil {
		return nil, err
	}
	if err := s.setupRedis(); err != nil {
		return nil, err
	}
	if err := s.setupState(); err != nil {
		s.closeRedis()
		return nil, err
	}
	if err := s.setupAudit(ctx); err != nil {
		s.closeRedis()
		_ = s.storeSink.Close()
		return nil, err
	}
	if err := s.setupOutcomes(); err != nil {
		return nil, err
	}
	if err := s.setupCheckpoints(); err != nil {
		return nil, err
	}
	ao := authz.Options{
		Parse: toolcall.Options{
			MCPPath:         opts.MCPPath,
			ToolsPathPrefix: opts.ToolsPathPrefix,
			MaxBodyBytes:    opts.MaxBodyBytes,
		},
		ApprovalHeader: opts.ApprovalHeader,
		Uses:           s.store,
		Revocations:    s.store,
		ClockSkew:      opts.ClockSkew,
		Logger:         opts.Logger,
		Metrics:        m,
		ShadowMetrics:  sm,
		Now:            opts.Now,
	}
	if opts.CacheSize > 0 {
		if s.cache, err = cache.NewMemory(cache.MemoryOptions{MaxEntries: opts.CacheSize, TTL: opts.CacheTTL}); err != nil {
			return nil, fmt.Errorf("decision cache: %w", err)
		}
		ao.Cache = s.cache
		if s.l2 != nil {
			mode, err := cache.ParseMode(opts.CacheL2Mode)
			if err != nil {
				return nil, fmt.Errorf("M1_CACHE_L2_MODE: %w", err)
			}
			if s.tiered, err = cache.NewTiered(cache.TieredOptions{L1: s.cache, L2: s.l2, Mode: mode, RTT: s.redis.RTT, Connected: s.redis.Connected}); err != nil {
				return nil, fmt.Errorf("decision cache: %w", err)
			}
			ao.Cache = s.tiered
		}
	}
	ao.Epoch = s.epoch
	ao.Audit = decisions{outcomes: s.outcomes}
	if s.audit != nil {
		ao.Audit = decisions{outcomes: s.outcomes, audit: s.audit}
	}
	if s.verifier != nil {
		ao.Tokens = s.verifier
	}
	if s.tls != nil && s.tls.MutualTLS() {
		ao.PeerPrincipal = certs.PeerSPIFFEID
	}
	if ao.RateLimit, err = s.rateLimiter(); err != nil {
		return nil, err
	}
	if ao.PrincipalHeader, ao.Gateway, err = opts.approvalsOptions(); err != nil {
		return nil, err
	}
	if s.authz, err = authz.New(ao, nil); err != nil {
		return nil, err
	}
	if err := s.setupPolicy(ctx); err != nil {
		return nil, err
	}

	s.grpc = grpc.NewServer(s.grpcServerOptions()...)
	authv3.RegisterAuthorizationServer(s.grpc, s.authz)
	accesslogv3.RegisterAccessLogServiceServer(s.grpc, s.outcomes)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)

	if opts.AdminToken == "" {
		s.opts.AdminToken, s.tokenGenerated = randomToken(), true
	}
	s.admin = admin.NewServer(s.adminHandler(), opts.AdminHTTP, zap.NewStdLog(opts.Logger.Named("admin")))
	if s.tls != nil {
		s.admin.TLSConfig = s.tls.Config("h2", "http/1.1")
	}
	return s, nil
}

// streamWorkers is how many goroutines serve gRPC streams, reused from call
// to call (a call that finds them all busy gets a goroutine of its own, as
// without workers). A new goroutine per call grows its stack to the depth
// of a check (Ed25519 verification, the Rego evaluation) every time: under
// load with fresh approvals that copying took 4–5% of the sidecar's CPU.
// Checks wait for their group commit (a few ms), so many are in flight.
func streamWorkers() uint32 { return uint32(32 * runtime.GOMAXPROCS(0)) }

// setupKeys builds the token verifier from the JWKS file and/or the HS256
// secret. Without either, a presented token is refused (token_invalid).
func (s *Server) setupKeys() error {
	o := s.opts
	if o.JWKSFile == "" && o.JWTSecret == "" {
		return nil
	}
	var (
		ks  *approval.KeySet
		err error
	)
	if o.JWKSFile != "" {
		if ks, err = approval.LoadJWKS(o.JWKSFile); err != nil {
			return fmt.Errorf("load M1_JWKS_FILE: %w", err)
		}
	}
	if o.JWTSecret != "" {
		if ks, err = ks.WithSecret([]byte(o.JWTSecret)); err != nil {
			return err
		}
		s.log.Warn("HS256 approval secret in use: every holder of M1_JWT_SECRET (every sidecar) can mint approvals; prefer M1_JWKS_FILE with EdDSA keys")
	}
	s.verifier, err = approval.NewVerifier(approval.VerifierOptions{
		Keys:           ks,
		Audience:       o.Audience,
		TrustedIssuers: approval.ParseIssuers(o.TrustedIssuers),
		MaxTTL:         time.Duration(o.TokenTTLMinutes) * time.Minute,
		ClockSkew:      approval.Leeway(o.ClockSkew),
		Now:            o.Now,
	})
	if err != nil {
		return fmt.Errorf("approval verifier: %w", err)
	}
	if o.JWKSFile != "" {
		s.keys = approval.NewWatcher(o.JWKSFile, []byte(o.JWTSecret), s.verifier, s.log.Named("keys"))
	}
	return nil
}

// ReloadKeys re-reads the JWKS file (main calls it on SIGHUP). A bad file
// keeps the old keys and is reported on /health.
func (s *Server) ReloadKeys() error {
	if s.keys == nil {
		return nil
	}
	return s.keys.Reload()
}

// LoadPolicy loads the bundle in dir (the embedded default when dir is "")
// and prepares it.
func LoadPolicy(ctx context.Context, dir string, o policy.Options) (*policy.Engine, error) {
	var (
		b   *policy.Bundle
		err error
	)
	if dir == "" {
		b, err = policy.LoadFS(policies.FS())
	} else {
		b, err = policy.LoadDir(dir)
	}
	if err != nil {
		return nil, err
	}
	e, err := policy.Prepare(ctx, b, o)
	if err != nil {
		return nil, fmt.Errorf("prepare policy: %w", err)
	}
	return e, nil
}

func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Start listens on both addresses and serves until Stop. A Start that
// fails leaves nothing behind: what it started is stopped, its listeners
// are closed.
func (s *Server) Start(ctx context.Context) (err error) {
	var lc net.ListenConfig
	if s.grpcLis, err = lc.Listen(ctx, "tcp", s.opts.GRPCAddr); err != nil {
		return fmt.Errorf("listen gRPC %s: %w", s.opts.GRPCAddr, err)
	}
	if s.adminLis, err = lc.Listen(ctx, "tcp", s.opts.AdminAddr); err != nil {
		s.grpcLis.Close()
		return fmt.Errorf("listen admin %s: %w", s.opts.AdminAddr, err)
	}
	defer func() {
		if err != nil {
			s.grpcLis.Close()
			s.adminLis.Close()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = s.Stop(sctx) // the start error matters more
		}
	}()
	if s.keys != nil {
		// The watcher lives as long as the server: Stop cancels it.
		wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s.stopKeys = cancel
		if err := s.keys.Start(wctx); err != nil {
			return fmt.Errorf("watch M1_JWKS_FILE: %w", err)
		}
	}
	s.outcomes.Start()
	if s.audit != nil {
		s.audit.Start(ctx)
		if s.checkpoints != nil {
			s.checkpoints.start(ctx)
		}
		if s.opts.PruneEvery > 0 {
			pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			s.stopPrune = cancel
			go audit.PruneLoop(pctx, s.opts.PruneEvery, s.opts.Now, s.storeSink.Store, s.log)
		}
	}
	s.startState(ctx) // before Redis: its first reload writes restored revocations back to an empty Redis
	if err := s.startRedis(ctx); err != nil {
		return err
	}
	ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopEpoch, s.epochDone = cancel, make(chan struct{})
	go func() { defer close(s.epochDone); s.watchEpoch(ectx) }()
	s.setServing(s.authz.Policy() != nil)
	// Outcomes do not depend on the policy: the access log is served from the start.
	s.health.SetServingStatus(accesslogv3.AccessLogService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.serving, s.servingCtx = errgroup.WithContext(context.WithoutCancel(ctx))
	s.serving.Go(func() error {
		// nil after Stop; ErrServerStopped when Stop came first.
		if err := s.grpc.Serve(s.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("gRPC server on %s stopped: %w", s.grpcLis.Addr(), err)
		}
		return nil
	})
	s.serving.Go(func() error {
		if err := s.serveAdmin(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin server on %s stopped: %w", s.adminLis.Addr(), err)
		}
		return nil
	})
	s.started.Store(true)
	rctx, stopRing := context.WithCancel(context.WithoutCancel(ctx))
	s.stopRing = stopRing
	go s.ring.Run(rctx)
	s.startPolicy(ctx)
	rev := ""
	if e := s.authz.Policy(); e != nil {
		rev = e.Revision()
	}
	s.log.Info("m1-authz started",
		zap.String("grpc_addr", s.grpcLis.Addr().String()),
		zap.String("admin_addr", s.adminLis.Addr().String()),
		zap.String("policy_revision", rev),
		zap.String("version", s.opts.Version),
		zap.Bool("tls", s.tls != nil))
	if s.tokenGenerated {
		s.log.Info("admin token generated; set M1_ADMIN_TOKEN to choose one",
			zap.String("dashboard_url", s.adminScheme()+"://"+s.adminLis.Addr().String()+"/?token="+s.opts.AdminToken))
	}
	return nil
}

// setServing sets the gRPC health status: SERVING once a policy is loaded.
func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, st)
}

// Addr is the gRPC listen address (after Start).
func (s *Server) Addr() net.Addr { return s.grpcLis.Addr() }

// AdminAddr is the admin HTTP listen address (after Start).
func (s *Server) AdminAddr() net.Addr { return s.adminLis.Addr() }

// AdminToken is the admin bearer token in force (generated when none was set).
func (s *Server) AdminToken() string { return s.opts.AdminToken }

// Authz is the decision service, for in-process callers and benchmarks.
func (s *Server) Authz() *authz.Service { return s.authz }

// Stop drains: health turns NOT_SERVING, in-flight checks finish (until ctx
// ends, then they are cut), and both servers close. Safe to call twice.
func (s *Server) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		defer close(s.done)
		s.draining.Store(true)
		s.health.Shutdown()
		if s.stopKeys != nil {
			s.stopKeys()
		}
		s.stopPolicy()
		if s.stopRing != nil {
			s.stopRing()
		}
		defer s.closeRedis()
		// The admin port keeps answering /health (draining) until gRPC
		// has drained.
		var err error
		s.outcomes.StopStreams() // Envoy's access-log streams never end by themselves
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			s.grpc.Stop()
			err = fmt.Errorf("drain gRPC: %w", ctx.Err())
		}
		if s.stopPrune != nil {
			s.stopPrune()
		}
		if s.stopState != nil {
			s.stopState()
		}
		if s.stopEpoch != nil {
			s.stopEpoch()
			<-s.epochDone
		}
		if e := s.outcomes.Close(ctx); e != nil && err == nil { // before the recorder closes
			err = e
		}
		if s.audit != nil { // in-flight checks are done: flush their events
			if e := s.audit.Close(ctx); e != nil && err == nil {
				err = e
			}
			if s.checkpoints != nil { // the chain's last events, flushed
				s.checkpoints.close(ctx)
			}
		}
		_ = s.storeSink.Close()
		if s.started.Load() {
			if e := s.admin.Shutdown(ctx); e != nil && err == nil {
				err = fmt.Errorf("shut down admin: %w", e)
			}
		}
		s.stopErr = err
		s.log.Info("m1-authz stopped")
	})
	<-s.done
	return s.stopErr
}

// Run builds the server and serves until ctx ends (see Serve).
func Run(ctx context.Context, opts Options, reload <-chan os.Signal) error {
	s, err := New(ctx, opts)
	if err != nil {
		return err
	}
	return s.Serve(ctx, reload)
}

// Serve starts the server and stops it when ctx ends, waiting at most
// DrainTimeout for in-flight checks, or when one of its servers stops by
// itself (a listener that fails): then it drains the other and returns
// that server's error, so that the process exits instead of running
// half-deaf. Each value on reload (SIGHUP) re-reads the JWKS file and asks
// the policy sources to load now.
func (s *Server) Serve(ctx context.Context, reload <-chan os.Signal) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	for wait := true; wait; {
		select {
		case <-reload:
			s.ReloadPolicy()
			if err := s.ReloadKeys(); err != nil {
				s.log.Error("reload approval keys: old keys kept", zap.Error(err))
			} else {
				s.log.Info("approval keys reloaded")
			}
		case <-s.servingCtx.Done():
			s.log.Error("a server stopped by itself: stopping", zap.Error(context.Cause(s.servingCtx)))
			wait = false
		case <-ctx.Done():
			wait = false
		}
	}
	s.log.Info("draining", zap.Duration("timeout", s.opts.DrainTimeout))
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.DrainTimeout)
	defer cancel()
	stopErr := s.Stop(stopCtx)
	return errors.Join(s.serving.Wait(), stopErr)
}

func (s *Server) healthReport() admin.Report {
	rep := admin.Report{Version: s.opts.Version, Checks: map[string]admin.Check{}, Started: s.started.Load()}
	rep.Checks["policy"] = s.policyCheck()
	rep.Checks["keys"] = s.keysCheck()
	rep.Checks["redis"] = s.redisCheck()
	rep.Checks["database"] = s.databaseCheck()
	rep.Checks["tls"] = s.tlsCheck()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rep.Checks["memory"] = admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"heap_alloc_bytes": ms.HeapAlloc, "sys_bytes": ms.Sys, "goroutines": runtime.NumGoroutine(),
	}}
	switch {
	case s.draining.Load():
		rep.Status, rep.Ready = admin.StatusFailing, false
		rep.Checks["lifecycle"] = admin.Check{Status: admin.StatusFailing, Detail: "draining"}
	case s.authz.Policy() == nil: // only a process that never loaded a policy is not ready
		rep.Status, rep.Ready = admin.StatusFailing, false
	default:
		rep.Status, rep.Ready = admin.StatusOK, true
		for _, c := range rep.Checks {
			if c.Status == admin.StatusDegraded {
				rep.Status = admin.StatusDegraded
			}
		}
	}
	return rep
}

func (s *Server) keysCheck() admin.Check {
	switch {
	case s.verifier == nil:
		return admin.Check{Status: admin.StatusDisabled, Detail: "no approval keys configured: presented tokens are refused"}
	case s.keys == nil:
		return admin.Check{Status: admin.StatusOK, Detail: "HS256 secret only", Info: map[string]any{"hs256": true}}
	}
	st := s.keys.Status()
	c := admin.Check{Status: admin.StatusOK, Info: map[string]any{
		"jwks_file": st.Path, "kids": st.KIDs, "loaded_at": st.LoadedAt, "hs256": s.verifier.Keys().HasSecret(),
	}}
	if st.LastError != "" {
		c.Status, c.Detail = admin.StatusDegraded, "last JWKS reload failed, old keys kept: "+st.LastError
	}
	return c
}

func (s *Server) adminHandler() http.Handler {
	revocations := &admin.RevocationsAPI{
		Store:         s.store,
		DefaultJTITTL: time.Duration(s.opts.TokenTTLMinutes)*time.Minute + 2*s.opts.ClockSkew,
		Now:           s.opts.Now,
	}
	if s.audit != nil {
		revocations.Audit = s.audit
	}
	s.ring = admin.NewRing(admin.RingOptions{Gatherer: s.opts.Gatherer, Extra: s.dashboardExtras, Step: s.opts.DashboardStep, Now: s.opts.Now})
	dashboard := &admin.DashboardAPI{Gatherer: s.opts.Gatherer, Records: s.records, Now: s.opts.Now}
	docs := dashboard.Documents()
	docs["history"] = admin.HistoryDoc(s.ring)
	routes := revocations.Routes()
	routes["POST /api/m1/cache/flush"] = http.HandlerFunc(s.flushCache)
	maps.Copy(routes, pprofRoutes())
	origins, _ := admin.ParseOrigins(s.opts.AllowedOrigins) // checked by validate
	return admin.NewHandler(admin.Options{
		Routes:         routes,
		Documents:      docs,
		Token:          s.opts.AdminToken,
		Gatherer:       s.opts.Gatherer,
		Health:         s.healthReport,
		AllowedOrigins: origins,
		Now:            s.opts.Now,
		API: map[string]func() any{
			"meta": func() any {
				return admin.Meta{Scope: admin.ScopePod, Service: "m1-authz", Version: s.opts.Version, History: s.ring.Detail()}
			},
			"health": func() any { return s.healthReport() },
			"policy": func() any {
				e := s.authz.Policy()
				if e == nil {
					return map[string]any{"revision": nil, "error": "no policy loaded yet"}
				}
				cacheable, _ := e.Cacheable()
				on, why := s.authz.Caching()
				doc := map[string]any{"revision": e.Revision(), "cacheable": cacheable, "decision_cache": on, "cache_off_reason": why, "needs": e.Needs(), "tools": e.Tools()}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				if revs, err := s.store.List(ctx); err == nil {
					doc["revocations"] = len(revs)
					doc["revocations_list"] = append([]state.Revocation{}, revs[:min(len(revs), maxRevocationsShown)]...)
				} else {
					doc["revocations_error"] = err.Error()
				}
				return doc
			},
			"cache": func() any {
				on, why := s.authz.Caching()
				if s.cache == nil {
					return map[string]any{"enabled": false, "decision_cache": on, "cache_off_reason": why}
				}
				doc := map[string]any{"enabled": true, "decision_cache": on, "cache_off_reason": why,
					"l1_entries": s.cache.Len(), "l1_max_entries": s.opts.CacheSize, "l1_evictions": s.cache.Evictions(), "ttl": s.opts.CacheTTL.String()}
				if s.tiered != nil {
					doc["tiered"] = s.tiered.Stats()
				}
				return doc
			},
		},
	})
}

// maxRevocationsShown bounds the revocations the policy document lists.
const maxRevocationsShown = 20

// dashboardExtras are the values of the dashboard's history that are not
// metrics: the L1 cache, the audit spool, the store's and Redis' latency.
func (s *Server) dashboardExtras(ctx context.Context) map[string]float64 {
	out := map[string]float64{}
	if s.cache != nil {
		out[admin.ExtraCacheEntries] = float64(s.cache.Len())
		out[admin.ExtraCacheEvictions] = float64(s.cache.Evictions())
	}
	if s.audit != nil {
		out[admin.ExtraAuditSpoolEvents] = float64(s.audit.Stats().SpoolEvents)
	}
	if s.storeSink != nil {
		start := time.Now()
		if err := s.storeSink.Ping(ctx); err == nil {
			out[admin.ExtraStorePingSeconds] = time.Since(start).Seconds()
		}
	}
	if s.redis != nil && s.redis.Connected() {
		out[admin.ExtraRedisRTTSeconds] = s.redis.RTT().Seconds()
	}
	return out
}
