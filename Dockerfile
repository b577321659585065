# bosun's controller image: a statically linked binary on an empty base.
#
#   docker build -t bosun:0.1.0 .          # or: podman build / buildah bud
#
# scripts/build-image.sh builds the same runtime image offline instead: it links the
# binary on the host the way the builder stage does (no registry, no base image) and
# wraps it FROM scratch exactly as the runtime stage does.

# ---- builder: Debian 12's toolchain image, glibc linked statically (+crt-static).
# git2 (libgit2 + libssh2, built from their bundled sources) and OpenSSL (libssl.a,
# libcrypto.a from libssl-dev) are linked in; glibc 2.36 resolves names without the
# NSS modules a static binary cannot load (dns and files are built into libc since 2.34).
FROM docker.io/library/rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config cmake ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV OPENSSL_STATIC=1 \
    LIBZ_SYS_STATIC=1 \
    RUSTFLAGS="-C target-feature=+crt-static"
RUN cargo build --locked --release --target x86_64-unknown-linux-gnu --bin bosun \
 && cp target/x86_64-unknown-linux-gnu/release/bosun /bosun \
 && mkdir -p /rootfs/etc/ssl/certs /rootfs/tmp /rootfs/var/cache/bosun \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' > /rootfs/etc/passwd \
 && echo 'nonroot:x:65532:' > /rootfs/etc/group

# ---- runtime: nothing but the binary, CA certificates and a passwd entry for 65532.
# gcr.io/distroless/static-debian12:nonroot is the alternative base when a shell-less
# image with /etc/os-release and tzdata is wanted; FROM scratch is smaller.
FROM scratch AS runtime
COPY --from=builder /rootfs/ /
COPY --from=builder --chown=65532:65532 /rootfs/tmp /tmp
COPY --from=builder --chown=65532:65532 /rootfs/var/cache/bosun /var/cache/bosun
COPY --from=builder /bosun /usr/local/bin/bosun
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    BOSUN_CACHE_DIR=/var/cache/bosun
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/bosun"]
CMD ["controller"]
