# M1 — make help lists the targets.
GO        ?= go
BIN       ?= bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION) -X github.com/m1-agent/m1/internal/cli.Version=$(VERSION)
FUZZTIME  ?= 30s
BENCHTIME ?= 2s

.PHONY: help build run test test-deps test-go test-rego lint bench fuzz demo clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build m1-authz, m1, m1-orchestrator and m1-demo-tool into ./bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build ## start m1-authz on embedded defaults (gRPC :9191, admin :9192)
	$(BIN)/m1-authz

test: test-deps test-go test-rego ## go test -race plus the Rego tests of the default bundle

# Install the servers the tests start (redis-server, PostgreSQL) and the
# headless browser of the dashboard test (chromium) when missing and we can;
# without them those tests skip loudly (and fail under CI=1).
test-deps:
	@need=""; command -v redis-server >/dev/null || need="$$need redis-server"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null || need="$$need chromium"; \
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

demo: build ## the approval loop on loopback: goal, proposals, m1 approve, dispatch through m1-authz, audit (DEMO_INTERACTIVE=1 to approve yourself)
	./scripts/demo.sh

fuzz: ## fuzz the request parser and the access-log entry handling for FUZZTIME each (default 30s)
	$(GO) test -run '^$$' -fuzz FuzzParseCall -fuzztime $(FUZZTIME) ./authz/
	$(GO) test -run '^$$' -fuzz FuzzEntry -fuzztime $(FUZZTIME) ./internal/outcome/

clean: ## remove build output
	rm -rf $(BIN)
