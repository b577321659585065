#!/usr/bin/env bash
# bosun's main job on an embedded default: a local control plane, an example app in a
# local Git repository, a good commit that becomes Healthy and a bad one that bosun
# flips back by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/control-plane-bins.sh
cargo build --locked --features devenv --bin bosun
exec target/debug/bosun demo "$@"
