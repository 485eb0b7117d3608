#!/usr/bin/env bash
# make release: M1's release artifacts, built with the Go toolchain alone.
#
#   scripts/release.sh           every platform of PLATFORMS into OUT (dist/)
#   scripts/release.sh --check   this machine's platform into a temporary
#                                directory, then verify it (what CI runs)
#
# For each platform: m1-authz, m1-orchestrator, m1 and m1-demo-tool as
# static binaries (CGO_ENABLED=0, -trimpath), with README.md and
# CHANGELOG.md, in m1_<version>_<os>_<arch>.tar.gz (reproducible: sorted,
# owner 0, mtime of the commit), and SHA256SUMS over the archives.
#
# VERSION defaults to the newest release in CHANGELOG.md and must have a
# section there; it is stamped into every binary (internal/buildinfo), as
# is the commit (REVISION). A release is built from a clean tree.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
if [ "${1:-}" = "--check" ]; then check=true; fi

GO=${GO:-go}
version=${VERSION:-$(sed -n 's/^## \[\([0-9][^]]*\)\].*/\1/p' CHANGELOG.md | head -n 1)}
if [ -z "$version" ] || ! grep -q "^## \[$version\]" CHANGELOG.md; then
  echo "release: CHANGELOG.md has no section for version '$version'; add one first" >&2
  exit 2
fi
revision=${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
  if ! $check; then
    echo "release: the work tree has changes; commit them first (a release names one commit)" >&2
    exit 2
  fi
  revision=$revision-dirty
fi
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
pkg=github.com/m1-agent/m1/internal/buildinfo
cmds=(m1-authz m1-orchestrator m1 m1-demo-tool)

if $check; then
  platforms=$($GO env GOOS)/$($GO env GOARCH)
  out=$(mktemp -d "${TMPDIR:-/tmp}/m1-release-check.XXXXXX")
  trap 'rm -rf "$out"' EXIT
else
  platforms=${PLATFORMS:-linux/amd64 linux/arm64}
  out=${OUT:-dist}
  rm -rf "$out"
  mkdir -p "$out"
fi

archives=()
for p in $platforms; do
  os=${p%/*} arch=${p#*/}
  name=m1_${version}_${os}_${arch}
  echo "release: $name (revision $revision)"
  mkdir -p "$out/$name"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch $GO build -trimpath \
    -ldflags "-s -w -X $pkg.version=$version -X $pkg.revision=$revision" \
    -o "$out/$name/" "${cmds[@]/#/./cmd/}"
  cp README.md CHANGELOG.md "$out/$name/"
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$out" -cf - "$name" |
    gzip -n -9 >"$out/$name.tar.gz"
  rm -rf "${out:?}/$name"
  archives+=("$name.tar.gz")
done
(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)

if ! $check; then
  echo "release: $out/"
  ls -l "$out"
  exit 0
fi

# The check: the checksums hold, and every binary is static and says the
# version and revision it was stamped with.
(cd "$out" && sha256sum --quiet -c SHA256SUMS)
tar -xzf "$out/${archives[0]}" -C "$out"
dir=$out/${archives[0]%.tar.gz}
for c in "${cmds[@]}"; do
  bin=$dir/$c
  if ! $GO version -m "$bin" | grep -q 'CGO_ENABLED=0'; then
    echo "release check: $c is not a static (CGO_ENABLED=0) build" >&2
    exit 1
  fi
  if [ "$c" = m1 ]; then got=$("$bin" version); else got=$("$bin" --version); fi
  want="$c $version (revision $revision, "
  case "$got" in
  "$want"*) ;;
  *)
    echo "release check: $c reports '$got', want '$want…'" >&2
    exit 1
    ;;
  esac
done
for f in README.md CHANGELOG.md; do
  cmp -s "$dir/$f" "$f" || { echo "release check: $f missing from the archive" >&2; exit 1; }
done
echo "release check: ${archives[0]} verified (SHA256SUMS, static, version $version)"
