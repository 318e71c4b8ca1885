# syntax=docker/dockerfile:1
# imagegate container image.
#
#   docker build -t imagegate .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#     -v "$PWD/imagegate.toml:/etc/imagegate/imagegate.toml:ro" \
#     -v imagegate-data:/var/lib/imagegate \
#     -e IMAGEGATE_UPSTREAM_KEY imagegate
#
# The gateway listens on 0.0.0.0:8080 in the container (IMAGEGATE_LISTEN overrides the config's
# `server.listen`), runs as uid/gid 10001 and writes only to /var/lib/imagegate (`[data] dir`), so
# it runs with a read-only root filesystem (`docker run --read-only`, Kubernetes
# `readOnlyRootFilesystem`). scripts/deploy-check.sh lints this file and runs the binary the same
# way outside Docker.

# --- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Least often changed first. Nothing else of the repository is needed to build the binary
# (src/ui.rs embeds ui/; benches/ is named by Cargo.toml; .cargo/config.toml sets SQLite's
# build flags).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY benches benches
COPY crates crates
COPY ui ui
COPY src src

# The registry, git checkouts and the target directory live in BuildKit cache mounts, so a
# rebuild after a source change downloads nothing and recompiles only what changed. The binary
# is copied out of the cached target directory in the same step.
RUN --mount=type=cache,id=imagegate-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=imagegate-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=imagegate-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin imagegate \
    && install -D -m 0755 target/release/imagegate /out/imagegate

# --- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates is left unpinned on purpose (hadolint DL3008): the trust store should follow
# Debian's security updates at every build, and a pinned version disappears from the mirror.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 imagegate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/imagegate --no-create-home \
        --shell /usr/sbin/nologin imagegate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/imagegate \
    && install -d -o root -g root -m 0755 /etc/imagegate

COPY --from=builder /out/imagegate /usr/local/bin/imagegate

LABEL org.opencontainers.image.title="imagegate" \
      org.opencontainers.image.description="An OpenAI-compatible gateway for image generation" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV IMAGEGATE_LISTEN=0.0.0.0:8080
# The working directory is the volume: a config without `[data] dir` keeps its data in
# ./imagegate-data there, and SQLite puts its temporary files there when /var/tmp and /tmp are
# read-only.
WORKDIR /var/lib/imagegate
VOLUME ["/var/lib/imagegate"]
EXPOSE 8080

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/imagegate", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]

# SIGTERM stops accepting and drains in-flight calls for up to `server.drain_timeout`: give
# `docker stop` / `docker compose` a longer stop timeout than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/imagegate"]
CMD ["serve", "--config", "/etc/imagegate/imagegate.toml"]
