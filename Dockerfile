# syntax=docker/dockerfile:1
# m1-authz (the entrypoint), m1-orchestrator and the m1 CLI as static binaries on a
# distroless, non-root base. To run the orchestrator, use --entrypoint /usr/local/bin/m1-orchestrator
# and point the health check at it: m1 health --url http://127.0.0.1:9193/health/live.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X github.com/m1-agent/m1/internal/cli.Version=${VERSION}" -o /out/ ./cmd/m1-authz ./cmd/m1 ./cmd/m1-orchestrator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/m1-authz /out/m1 /out/m1-orchestrator /usr/local/bin/
USER 65532:65532
ENV M1_DATA_DIR=/home/nonroot/data
WORKDIR /home/nonroot
EXPOSE 9191 9192 9193
# distroless has no shell or curl: the m1 CLI probes liveness itself.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/m1", "health", "--url", "http://127.0.0.1:9192/health/live"]
ENTRYPOINT ["/usr/local/bin/m1-authz"]
