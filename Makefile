# M1 — make help lists the targets.
GO        ?= go
BIN       ?= bin
# One version for every binary (internal/buildinfo): --version, m1 version,
# /health and m1_build_info all report it.
VERSION   ?= $(patsubst v%,%,$(shell git describe --tags --always --dirty 2>/dev/null || echo dev))
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS   := -s -w -X github.com/m1-agent/m1/internal/buildinfo.version=$(VERSION) -X github.com/m1-agent/m1/internal/buildinfo.revision=$(REVISION)
FUZZTIME  ?= 30s
BENCHTIME ?= 2s

.PHONY: help build run test test-deps test-go test-rego lint bench loadtest fuzz demo release release-check screenshots clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build m1-authz, m1, m1-orchestrator and m1-demo-tool into ./bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build ## start m1-authz on embedded defaults (gRPC :9191, admin :9192)
	$(BIN)/m1-authz

test: test-deps test-go test-rego ## go test -race plus the Rego tests of the default bundle

# Install the servers the tests start (redis-server, PostgreSQL), the
# headless browser of the dashboard test (chromium), promtool (Debian's
# prometheus package, for deploy/compose) and the docs' tools (curl, jq,
# sqlite3, openssl: TestDocs) when missing and we can;
# without them those tests skip loudly (and fail under CI=1).
test-deps:
	@need=""; command -v redis-server >/dev/null || need="$$need redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
	command -v promtool >/dev/null || need="$$need prometheus"; \
	for tool in curl jq sqlite3 openssl; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$need for the tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) || echo "could not install$$need; those tests will skip"; \
	  else echo "not installed and not root:$$need; those tests will skip (apt-get install$$need)"; fi; \
	fi

test-go:
	$(GO) test -race -count=1 ./...

test-rego:
	$(GO) run ./cmd/m1 policy test policies

lint: ## go vet, gofmt check, and staticcheck when installed
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

bench: ## Go benchmarks of the Check path, then gRPC load (ghz) against m1-authz (without, then with audit) and a no-op server
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./authz/ ./internal/policy/ ./internal/approval/
	@out=$$(mktemp); { $(GO) test -run '^$$' -bench '^BenchmarkCheck$$/cache_hit(_audited)?$$' -count 8 -benchtime 1s ./authz/; \
	  echo $$? >$$out.rc; } | tee $$out; rc=$$(cat $$out.rc); awk -f scripts/bench-ratios.awk $$out; rm -f $$out $$out.rc; exit $$rc
	$(GO) run ./cmd/m1 bench
	$(GO) run ./cmd/m1 bench --audit

# LOADTEST_FLAGS: e.g. --duration 20s, --baseline docs/perf/report.json,
# --scenario approvals; LOADTEST_OUT: where report.json and report.html go.
LOADTEST_OUT   ?= loadtest-report
LOADTEST_FLAGS ?=
loadtest: build ## the load scenarios (cache, policy, approvals, agents, metrics) against real processes; writes $(LOADTEST_OUT)/report.{json,html}
	$(BIN)/m1 loadtest --bin $(BIN) --out $(LOADTEST_OUT) $(LOADTEST_FLAGS)

demo: build ## the approval loop on loopback: goal, proposals, m1 approve, dispatch through m1-authz, audit (DEMO_INTERACTIVE=1 to approve yourself)
	./scripts/demo.sh

release: ## static binaries for linux/amd64 and linux/arm64 with SHA256SUMS in dist/ (version: CHANGELOG.md's newest)
	GO=$(GO) ./scripts/release.sh

release-check: ## build the release for this platform in a temp dir and verify it (checksums, static, --version); CI runs it
	GO=$(GO) ./scripts/release.sh --check

fuzz: ## run every fuzz target of the module, each for FUZZTIME (default 30s)
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
	  dir=$$(dirname $$f); \
	  for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
	    echo "== $$dir $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./$$dir/; \
	  done; \
	done

screenshots: ## regenerate docs/img/dashboard-*.png: the dashboard's browser tests, in headless Chromium, with M1_SCREENSHOTS set
	M1_SCREENSHOTS=$(CURDIR)/docs/img $(GO) test -count=1 -p 1 -run '^(TestDashboardInChromium|TestFleetDashboardInChromium)$$' ./internal/sidecar/ ./internal/orchestratord/

clean: ## remove build output (bin/, dist/)
	rm -rf $(BIN) dist
