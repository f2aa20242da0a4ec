#!/usr/bin/env bash
# Build the operator and node-runtime images without Docker or a registry, as OCI archives that
# `ctr images import` loads:
#
#   bash images/build-oci.sh DIR      # writes DIR/operator.tar and DIR/node-runtime.tar
#
# Both start from one Debian bookworm minbase root filesystem made by mmdebstrap (python3,
# python-is-python3, git, ca-certificates, openssh-client). The node-runtime image adds the
# omninode-runtime package (python/omninode-runtime) and its dependencies, pip-installed by this
# machine's Python 3.11 into /usr/local/lib/python3.11/dist-packages (bookworm's Python is 3.11
# too, and manylinux wheels fit its glibc); the operator image adds the release binary. umoci
# packs each as a one-layer OCI image named localhost/omninode/<image>:<version> (the
# operator's version from Cargo.toml, which the runtime shares). The Dockerfiles beside this
# script build the same images for those who have Docker and a registry.
#
# Needs: mmdebstrap, umoci (Debian packages), python3.11 with pip, cargo; root, for mmdebstrap's
# root mode and umoci's unpack. Environment: DEBIAN_MIRROR (default deb.debian.org),
# PYTHON (default python3.11), OPERATOR_BIN (a built binary instead of `cargo build --release`),
# IMAGES (default "node-runtime operator": which to build).
set -euo pipefail

OUT=${1:?usage: bash images/build-oci.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3.11}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGES=${IMAGES:-node-runtime operator}
wanted() { [[ " $IMAGES " == *" $1 "* ]]; }
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
# The versions the test suite runs every generated node with (tests/python/requirements.txt).
NODE_PACKAGES=(pydantic==2.14.3 confluent-kafka==2.16.1 pyyaml==6.0.3)

for tool in mmdebstrap umoci tar; do
  command -v "$tool" >/dev/null || { echo "build-oci: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "build-oci: $PYTHON must be a Python 3.11 (bookworm's)" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/omninode-oci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "base root filesystem (mmdebstrap, bookworm minbase)"
# Users: 10001 runs nodes (the Deployments' runAsUser), 65532 the operator (the chart's).
mmdebstrap --quiet --variant=minbase --mode=root \
  --include=python3,python-is-python3,git,ca-certificates,openssh-client \
  --customize-hook='echo "node:x:10001:10001:omninode node:/opt/node:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "node:x:10001:" >> "$1/etc/group"' \
  --customize-hook='echo "nonroot:x:65532:65532:omninode operator:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "nonroot:x:65532:" >> "$1/etc/group"' \
  --customize-hook='mkdir -p "$1/opt/node" && chown 10001:10001 "$1/opt/node"' \
  --customize-hook='rm -rf "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/*' \
  bookworm "$WORK/base.tar" "$MIRROR"

# pack NAME FILL CONFIG...: an OCI image NAME whose root filesystem is the base plus what
# the function FILL adds (given the rootfs directory), with umoci config options CONFIG.
pack() {
  local name=$1 fill=$2
  shift 2
  local layout="$WORK/oci-$name" bundle="$WORK/bundle-$name"
  umoci init --layout "$layout"
  umoci new --image "$layout:$VERSION"
  umoci unpack --image "$layout:$VERSION" "$bundle"
  tar -C "$bundle/rootfs" -xf "$WORK/base.tar"
  "$fill" "$bundle/rootfs"
  umoci repack --image "$layout:$VERSION" "$bundle"
  umoci config --image "$layout:$VERSION" --author omninode-operator "$@"
  umoci gc --layout "$layout"
  # ctr names an imported image by this annotation (else it needs --base-name).
  "$PYTHON" - "$layout/index.json" "localhost/omninode/$name:$VERSION" <<'PY'
import json, sys
path, name = sys.argv[1], sys.argv[2]
index = json.load(open(path))
for manifest in index["manifests"]:
    manifest.setdefault("annotations", {})["io.containerd.image.name"] = name
json.dump(index, open(path, "w"))
PY
  tar -C "$layout" -cf "$OUT/$name.tar" .
  echo "$OUT/$name.tar: localhost/omninode/$name:$VERSION ($(du -h "$OUT/$name.tar" | cut -f1))"
}

fill_node_runtime() {
  local site="$1/usr/local/lib/python3.11/dist-packages"
  mkdir -p "$site"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-cache-dir --no-compile --no-warn-conflicts \
    --target "$site" "${NODE_PACKAGES[@]}" "$ROOT/python/omninode-runtime[kafka]"
  rm -rf "$site/bin"
}

fill_operator() {
  install -D -m 0755 "$OPERATOR_BIN" "$1/usr/local/bin/omninode-operator"
}

if wanted node-runtime; then
step "node-runtime image"
pack node-runtime fill_node_runtime \
  --config.user 10001:10001 --config.workingdir /opt/node \
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 \
  --config.cmd python --config.cmd -c \
  --config.cmd "import omninode_runtime; print('omninode node runtime', omninode_runtime.RUNTIME_VERSION)"
fi

wanted operator || exit 0
step "operator image"
if [ -z "${OPERATOR_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked --bin omninode-operator)
  OPERATOR_BIN=$ROOT/target/release/omninode-operator
fi
cp "$OPERATOR_BIN" "$WORK/omninode-operator" && strip "$WORK/omninode-operator" 2>/dev/null || true
OPERATOR_BIN=$WORK/omninode-operator
pack operator fill_operator \
  --config.user 65532:65532 --config.exposedports 8080/tcp \
  --config.entrypoint /usr/local/bin/omninode-operator --config.cmd run
