# syntax=docker/dockerfile:1
#
# SecureGate: one image for every role (gateway edge/egress/all, admin, projector,
# sentinel, mock-provider, keygen, healthcheck).
#
#   docker build -t securegate .
#   docker run --rm securegate server gateway --help
#
# The runtime image is distroless (no shell, no package manager) and runs as the
# nonroot user 65532; container health checks use `securegate healthcheck URL`.

# ---- build -------------------------------------------------------------------------
# rust-toolchain.toml pins 1.95.0; the official image of the same release builds it.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The cargo registry and the target directory are BuildKit cache mounts: they survive
# between builds but are not part of any layer, so the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p securegate \
    && install -D -m 0755 target/release/securegate /out/securegate
# The state directory (usage spool) must be writable by the nonroot user; the runtime
# image has no shell to create it, so it is made here and copied with its owner.
RUN install -d -m 0750 /out/var/lib/securegate/spool

# ---- runtime -----------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/securegate /usr/local/bin/securegate
COPY --from=builder --chown=65532:65532 /out/var/lib/securegate /var/lib/securegate
USER 65532:65532
WORKDIR /var/lib/securegate
# 8080 gateway, 8081 admin API (projector 8082 and sentinel 8083 serve only health and
# metrics; mock-provider 9000).
EXPOSE 8080 8081
ENTRYPOINT ["securegate"]
CMD ["--help"]
