# syntax=docker/dockerfile:1
# m1-authz (the entrypoint), m1-orchestrator, m1-demo-tool and the m1 CLI as
# static binaries on a distroless, non-root base. For another binary, set the
# entrypoint and point the health check at it, as deploy/compose/compose.yaml
# does: m1-orchestrator (m1 health --url http://127.0.0.1:9193/health/live),
# m1-demo-tool (--listen ADDR; m1 health --url http://ADDR/health).
#
#   docker build --build-arg VERSION=0.10.0 --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/m1-agent/m1:0.10.0 .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG REVISION=
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/m1-agent/m1/internal/buildinfo.version=${VERSION} -X github.com/m1-agent/m1/internal/buildinfo.revision=${REVISION}" \
      -o /out/ ./cmd/m1-authz ./cmd/m1 ./cmd/m1-orchestrator ./cmd/m1-demo-tool
# The directories volumes are mounted on, owned by the nonroot user: a new
# named volume takes the owner of the directory it is mounted on.
RUN mkdir -p /home-nonroot/data /home-nonroot/workspace

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/m1-authz /out/m1 /out/m1-orchestrator /out/m1-demo-tool /usr/local/bin/
COPY --from=build --chown=65532:65532 /home-nonroot/ /home/nonroot/
USER 65532:65532
ENV M1_DATA_DIR=/home/nonroot/data
WORKDIR /home/nonroot
EXPOSE 9191 9192 9193
# distroless has no shell or curl: the m1 CLI probes liveness itself.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/m1", "health", "--url", "http://127.0.0.1:9192/health/live"]
ENTRYPOINT ["/usr/local/bin/m1-authz"]
