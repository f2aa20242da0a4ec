#!/usr/bin/env bash
# The whole test suite, from a fresh machine: Rust (fmt, clippy, unit and integration tests) and
# the generated-node checks with real Python tooling (ruff, mypy --strict, pytest) and a real
# Kafka broker (tansu). What it installs is cached outside the repository, in $OMNINODE_CACHE
# (default ~/.cache/omninode-operator), and reused on the next run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${OMNINODE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/omninode-operator}
TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
mkdir -p "$CACHE"
step() { printf '\n==> %s\n' "$*"; }

step "Python tooling (venv in $CACHE/venv)"
VENV=$CACHE/venv
REQUIREMENTS=$ROOT/tests/python/requirements.txt
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" >"$VENV/.requirements.sha256"
fi
# The e2e chart scenarios install the Helm chart through this venv's helm-python-sdk.
export OMNINODE_PYTHON=$VENV/bin/python

step "ONEX packages (Python 3.12 venv in $CACHE/onex-venv) for the interop tests"
# omnibase-core and omnibase-infra need Python >= 3.12: pyenv's 3.12 on these machines.
ONEX_VENV=$CACHE/onex-venv
ONEX_REQUIREMENTS=$ROOT/tests/python/onex-requirements.txt
want=$(sha256sum "$ONEX_REQUIREMENTS" | cut -d' ' -f1)
PY312=$(PYENV_VERSION=3.12.1 command -v python3.12 2>/dev/null || true)
if [ -z "$PY312" ] && [ -x "$HOME/.pyenv/versions/3.12.1/bin/python3.12" ]; then
  PY312=$HOME/.pyenv/versions/3.12.1/bin/python3.12
fi
if [ -n "$PY312" ]; then
  if [ ! -x "$ONEX_VENV/bin/onex" ] || [ "$(cat "$ONEX_VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    rm -rf "$ONEX_VENV"
    PYENV_VERSION=3.12.1 "$PY312" -m venv "$ONEX_VENV"
    "$ONEX_VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$ONEX_REQUIREMENTS"
    echo "$want" >"$ONEX_VENV/.requirements.sha256"
  fi
  export OMNINODE_ONEX_PYTHON=$ONEX_VENV/bin/python
else
  echo "no Python 3.12 found; the ONEX interop tests will skip (fail in CI)"
fi

step "Kafka broker (tansu $TANSU_VERSION, features $TANSU_FEATURES, in $CACHE)"
# The tests run it on SQLite storage (libsql), the latency benchmark on in-memory storage
# (dynostore); tests/support/kafka.rs says why.
TANSU_ROOT=$CACHE/tansu-$TANSU_VERSION-${TANSU_FEATURES//,/-}
TANSU=$TANSU_ROOT/bin/tansu
if [ ! -x "$TANSU" ]; then
  echo "building tansu once (about 15 minutes on two cores); later runs reuse it"
  cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
    --root "$TANSU_ROOT" --quiet
fi
export TANSU_BIN=$TANSU

step "promtool and prometheus (Debian's prometheus package, unpacked into $CACHE)"
PROMTOOL=$CACHE/prometheus/usr/bin/promtool
if [ ! -x "$PROMTOOL" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download prometheus >/dev/null); then
    dpkg -x "$tmp"/prometheus_*.deb "$CACHE/prometheus"
  else
    echo "could not download Debian's prometheus package; the promtool check will be skipped"
  fi
  rm -rf "$tmp"
fi
export PROMTOOL
# The same package's server: the e2e suite scrapes the operator with it (the dashboard and alerts).
PROMETHEUS=$CACHE/prometheus/usr/bin/prometheus
export PROMETHEUS

step "lua5.1 (Debian's lua5.1 package, unpacked into $CACHE) for the Argo CD health checks"
# Argo CD runs health checks with gopher-lua, a Lua 5.1: tests/python/test_argocd_health.py runs
# argocd/health/ with the real interpreter. Debian's lua5.1 has liblua linked in statically; its
# one library beyond libc, libreadline8, is unpacked alongside for machines without it.
LUA51=$CACHE/lua5.1/usr/bin/lua5.1
if [ ! -x "$LUA51" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download lua5.1 libreadline8 >/dev/null); then
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$CACHE/lua5.1"; done
  else
    echo "could not download Debian's lua5.1 package; the Argo CD health tests will skip (fail in CI)"
  fi
  rm -rf "$tmp"
fi
if [ -x "$LUA51" ]; then
  LUA51_LIBRARY_PATH=$(find "$CACHE/lua5.1" -name 'lib*.so.*' -printf '%h\n' | sort -u | paste -sd:)
  export LUA51 LUA51_LIBRARY_PATH
fi

step "sshd (Debian's openssh-server with nss_wrapper, unpacked into $CACHE) for the Git-over-SSH test"
# tests/git_output.rs runs it unprivileged on a loopback port; nss_wrapper supplies its user.
SSHD_ROOT=$CACHE/sshd
if [ ! -x "$SSHD_ROOT/usr/sbin/sshd" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download openssh-server libwrap0 libnss-wrapper >/dev/null); then
    for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$SSHD_ROOT"; done
  else
    echo "could not download openssh-server; the SSH test will skip (fail in CI)"
  fi
  rm -rf "$tmp"
fi
if [ -x "$SSHD_ROOT/usr/sbin/sshd" ]; then export SSHD_ROOT; fi

step "real pods: containerd, runc, CNI plugins, the node-runtime and operator images (when a kubelet is there)"
# The e2e harness runs a one-node cluster when the control plane's binary directory also holds
# kubelet and kube-scheduler (docs/testing.md, "Real pods"). It needs these Debian packages and
# the node-runtime and operator images, built without Docker by images/build-oci.sh.
ASSETS=${KUBEBUILDER_ASSETS:-/usr/local/kubebuilder/bin}
if [ -z "${OMNINODE_E2E_KUBECONFIG:-}" ] && [ -x "$ASSETS/kubelet" ] && [ -x "$ASSETS/kube-scheduler" ]; then
  NODE_PACKAGES="containerd runc containernetworking-plugins mmdebstrap umoci busybox-static iptables"
  if ! dpkg -s $NODE_PACKAGES >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $NODE_PACKAGES
  fi
  # Each image is rebuilt only when what it is made of changed: the node-runtime image from the
  # runtime package, the operator image from the release binary (built in a target directory
  # under the cache, so that only this crate recompiles from one run to the next).
  OCI=$CACHE/oci
  mkdir -p "$OCI"
  stale=""
  want_runtime=$( (cat "$ROOT/images/build-oci.sh" "$ROOT/Cargo.toml"; cd "$ROOT" && git ls-files -z python/omninode-runtime \
    | xargs -0 cat) | sha256sum | cut -d' ' -f1)
  if [ ! -f "$OCI/node-runtime.tar" ] || [ "$(cat "$OCI/node-runtime.sha256" 2>/dev/null)" != "$want_runtime" ]; then
    stale="node-runtime"
  fi
  (cd "$ROOT" && CARGO_TARGET_DIR=$CACHE/target-release cargo build --release --locked --quiet --bin omninode-operator)
  OPERATOR_BIN=$CACHE/target-release/release/omninode-operator
  want_operator=$(cat "$ROOT/images/build-oci.sh" "$OPERATOR_BIN" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$OCI/operator.tar" ] || [ "$(cat "$OCI/operator.sha256" 2>/dev/null)" != "$want_operator" ]; then
    stale="$stale operator"
  fi
  if [ -n "$stale" ]; then
    IMAGES=$stale OPERATOR_BIN=$OPERATOR_BIN bash "$ROOT/images/build-oci.sh" "$OCI"
    echo "$want_runtime" >"$OCI/node-runtime.sha256"
    echo "$want_operator" >"$OCI/operator.sha256"
  fi
  export OMNINODE_OCI_DIR=$OCI
  echo "real-pod scenarios enabled: kubelet in $ASSETS, images in $OCI"
else
  echo "no kubelet and kube-scheduler beside the control plane: the e2e scenarios stay object-only"
fi

cd "$ROOT"
step "omninode-runtime's own suite: ruff, mypy --strict, pytest (python/omninode-runtime)"
(
  cd python/omninode-runtime
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/ruff" check .
  "$VENV/bin/mypy" --cache-dir "$CACHE/mypy-runtime"
  PYTHONDONTWRITEBYTECODE=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider
)

step "cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked

step "fuzzing: the PRD parser, the manifest reader, the escaping filters, the reply decoder (60 s each)"
# tests/fuzz.rs: property-based, mutating the seed corpora in tests/fuzz/corpus/ (2 s each in
# the plain `cargo test` above).
OMNINODE_FUZZ_SECONDS=60 cargo test --locked --test fuzz -- --nocapture

step "generated nodes: ruff, mypy --strict, pytest, start, probes, SIGTERM, broker"
OMNINODE_BIN=$ROOT/target/debug/omninode-operator \
OMNINODE_MYPY_CACHE=$CACHE/mypy PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python

step "end-to-end tests against a real Kubernetes control plane"
# tests/e2e.rs ran inside `cargo test` above; say what it had to work with.
if [ -n "${KUBEBUILDER_ASSETS:-}" ] || [ -n "${OMNINODE_E2E_KUBECONFIG:-}" ] \
   || [ -x /usr/local/kubebuilder/bin/kube-apiserver ]; then
  echo "ran against ${OMNINODE_E2E_KUBECONFIG:-${KUBEBUILDER_ASSETS:-/usr/local/kubebuilder/bin}}"
else
  echo "skipped: set KUBEBUILDER_ASSETS to a directory with etcd and kube-apiserver (and"
  echo "kube-controller-manager), or OMNINODE_E2E_KUBECONFIG to a cluster (docs/testing.md)"
fi
