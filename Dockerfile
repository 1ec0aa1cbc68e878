# syntax=docker/dockerfile:1
#
# fleetgate container image: a release build of the `fleetgate` binary on
# distroless (glibc, CA certificates, no shell), running as uid 65532.
#
#   docker build -t fleetgate:dev .
#   docker run --rm -p 3000:3000 -p 9464:9464 fleetgate:dev --demo
#
# Dependencies are compiled in their own layer (cargo-chef), so a change to
# src/ rebuilds only the crate itself.

# Same toolchain as development (rustc 1.95); Cargo.toml's rust-version is the floor.
ARG RUST_IMAGE=rust:1.95-bookworm

FROM ${RUST_IMAGE} AS chef
# Pinned so the recipe format does not change under a cached layer.
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /build

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
COPY testkit/Cargo.toml ./testkit/Cargo.toml
COPY testkit/src ./testkit/src
# The forks [patch.crates-io] points at (vendor/PATCHES.md).
COPY vendor ./vendor
RUN cargo chef prepare --bin fleetgate --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
# The patched dependencies are cooked with the others, so they come first.
COPY vendor ./vendor
RUN cargo chef cook --release --locked --bin fleetgate --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench/Cargo.toml ./bench/Cargo.toml
COPY bench/src ./bench/src
COPY testkit/Cargo.toml ./testkit/Cargo.toml
COPY testkit/src ./testkit/src
# The map page and the Socket.IO client are compiled in with include_str!.
COPY static ./static
RUN cargo build --release --locked --bin fleetgate

# Bookworm builder, Debian 12 runtime: the same glibc the binary was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="fleetgate" \
      org.opencontainers.image.description="Real-time location gateway for vehicle fleets: Socket.IO in, Socket.IO out, Redis in between." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder --chmod=0555 /build/target/release/fleetgate /usr/local/bin/fleetgate

USER 65532:65532
# Socket.IO, HTTP API and map page (FLEETGATE_ADDR); Prometheus /metrics (FLEETGATE_METRICS_ADDR).
EXPOSE 3000 9464

# No shell or curl in the image: the binary probes its own /healthz.
# Kubernetes ignores this and uses the chart's httpGet probes.
HEALTHCHECK --interval=15s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/fleetgate", "healthcheck"]

# Exec form: fleetgate is PID 1 and gets SIGTERM directly, which starts the drain.
ENTRYPOINT ["/usr/local/bin/fleetgate"]
