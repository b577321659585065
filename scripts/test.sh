#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, generated CRDs, then every
# unit and integration test against a real local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

bash scripts/control-plane-bins.sh
# The metrics gate's tests scrape with a real Prometheus (Debian's package, 2.42).
[ -x /usr/bin/prometheus ] || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2; }
# The chart's tests (tests/install.rs) lint and render it with Helm's own library: Helm v4 as a Python package.
export BOSUN_PYTHON=${BOSUN_PYTHON:-$(command -v python3)}
"$BOSUN_PYTHON" -c 'import helm_python' 2>/dev/null || "$BOSUN_PYTHON" -m pip install -q helm-python-sdk==0.2.2 >&2
export KUBE_APISERVER=${KUBE_APISERVER:-$PWD/target/control-plane/bin/kube-apiserver}
export KUBE_CONTROLLER_MANAGER=${KUBE_CONTROLLER_MANAGER:-$PWD/target/control-plane/bin/kube-controller-manager}
export ETCD=${ETCD:-$(command -v etcd)}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
echo "== the controller as shipped builds without the devenv and fault-injection features"
cargo check --locked --bin bosun
echo "== tests"
cargo nextest run --workspace --all-features --locked --no-fail-fast "$@"
echo "test suite took $(( $(date +%s) - start ))s"
