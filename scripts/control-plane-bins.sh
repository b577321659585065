#!/usr/bin/env bash
# Installs what bosun's build, tests and demo need from Debian (Go, etcd, git,
# OpenSSL headers, sshd) and builds kube-apiserver and kube-controller-manager
# (Kubernetes 1.20 from Debian's source package) once, caching them under
# target/control-plane/bin. Progress goes to stderr. Safe to rerun: a cached build
# is reused.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/target/control-plane"
bin="$out/bin"
mkdir -p "$bin"

need_pkgs=()
command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || need_pkgs+=(golang-go)
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v git >/dev/null 2>&1 || need_pkgs+=(git)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need_pkgs+=(golang-github-modern-go-reflect2-dev)
command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
# git2 builds libgit2 and libssh2 against OpenSSL.
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
# The SSH Git server of the tests (src/devenv/git_ssh.rs) runs its own sshd.
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ ${#need_pkgs[@]} -eq 0 ]; then
  echo "control plane: cached binaries in $bin" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
src_list=/etc/apt/sources.list.d/bosun-deb-src.sources
if [ ! -f "$src_list" ]; then
  cat > "$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
echo "control plane: apt-get update" >&2
apt-get update -qq >&2
apt-get install -y -qq golang-go etcd-server rsync jq golang-github-modern-go-reflect2-dev git openssl libssl-dev pkg-config gcc make openssh-server >&2

if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ]; then
  exit 0
fi

work="$out/src"
mkdir -p "$work"
cd "$work"
if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  echo "control plane: fetching Debian source of kubernetes" >&2
  apt-get source --download-only kubernetes >&2
fi
tree="$work/tree"
if [ ! -f "$tree/Makefile" ]; then
  rm -rf "$tree" && mkdir -p "$tree"
  tar -xzf kubernetes_*.orig.tar.gz -C "$tree" --strip-components=1
fi
cd "$tree"
# The vendored reflect2 1.0.1 crashes the API server under Go >= 1.18 (SIGSEGV in
# mapiterinit on the first custom resource); Debian ships the fixed 1.0.2.
r2=vendor/github.com/modern-go/reflect2
rm -f "$r2"/*.go "$r2"/*.s
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$r2"/
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$r2"/ 2>/dev/null || true
rm -f "$r2"/*_test.go
mkdir -p .go/src/k8s.io
[ -e .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
echo "control plane: building kube-apiserver and kube-controller-manager (about 5 minutes)" >&2
start=$(date +%s)
GOPATH=$PWD/.go CGO_ENABLED=0 GOFLAGS=-mod=vendor make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$bin"/
echo "control plane: built in $(( $(date +%s) - start ))s" >&2
# The source tree is large; the binaries are all that is needed.
cd "$work" && rm -rf "$tree"
