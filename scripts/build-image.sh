#!/usr/bin/env bash
# Builds bosun's controller image here, offline: no registry, no base image.
#
#   scripts/build-image.sh                 # -> localhost/bosun:<version>
#   IMAGE=localhost/bosun:dev scripts/build-image.sh
#
# 1. Debian's buildah and podman are installed when missing (with runc: crun refuses
#    hybrid cgroup v1/v2 hosts such as this one).
# 2. The binary is linked statically on the host: glibc with +crt-static, OpenSSL from
#    libssl.a, libgit2 and libssh2 from their bundled sources. (The musl target needs
#    `rustup target add`, which downloads.)
# 3. `buildah bud` wraps it FROM scratch with the CA certificates and a passwd entry for
#    the non-root user 65532: the Dockerfile's runtime stage, without its builder stage.
#
# To run the image against a cluster (see README, "Install"):
#   mkdir cache && chown 65532:65532 cache
#   podman --storage-driver vfs --runtime runc run --rm --network host --read-only \
#     --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -v "$PWD/cache:/var/cache/bosun" \
#     -v "$KUBECONFIG:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig localhost/bosun:<version>
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${IMAGE:-localhost/bosun:$version}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
# vfs needs no kernel overlay support (sandboxes, CI containers).
storage=(--storage-driver "${STORAGE_DRIVER:-vfs}")

if ! command -v buildah >/dev/null || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah podman runc >&2
fi

echo "== static binary (release, x86_64-unknown-linux-gnu, +crt-static)"
OPENSSL_STATIC=1 LIBZ_SYS_STATIC=1 RUSTFLAGS='-C target-feature=+crt-static' \
  nice -n 19 cargo build --locked --release --target x86_64-unknown-linux-gnu --bin bosun
binary=$target_dir/x86_64-unknown-linux-gnu/release/bosun
if ldd "$binary" >/dev/null 2>&1 && ! ldd "$binary" 2>&1 | grep -q "statically linked"; then
  echo "$binary is dynamically linked:" >&2
  ldd "$binary" >&2
  exit 1
fi

# The crash tests' fault switch is a cargo feature (fault-injection) the image must not have.
if grep -qa "fault injection: aborting" "$binary"; then
  echo "$binary has the fault switch: build it without --features fault-injection" >&2
  exit 1
fi

echo "== image $image (FROM scratch)"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc/ssl/certs" \
  "$context/rootfs/tmp" "$context/rootfs/var/cache/bosun"
cp "$binary" "$context/rootfs/usr/local/bin/bosun"
cp /etc/ssl/certs/ca-certificates.crt "$context/rootfs/etc/ssl/certs/"
echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$context/rootfs/etc/passwd"
echo 'nonroot:x:65532:' >"$context/rootfs/etc/group"
chown 65532:65532 "$context/rootfs/tmp" "$context/rootfs/var/cache/bosun"
chmod 1777 "$context/rootfs/tmp"
cat >"$context/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    BOSUN_CACHE_DIR=/var/cache/bosun
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bosun"]
CMD ["controller"]
EOF
buildah "${storage[@]}" bud --layers=false -t "$image" -f "$context/Containerfile" "$context"
podman "${storage[@]}" image inspect "$image" --format '{{.Id}} {{.Size}} bytes, user {{.Config.User}}'
echo "built $image"
