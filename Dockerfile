# syntax=docker/dockerfile:1.7
#
# One image with the three binaries: spool-ingest, spool-delivery, spool-revalidator, in
# /usr/local/bin. Each Kubernetes Deployment picks its binary with `command`; `docker run
# IMAGE spool-delivery` does the same by hand (the default command is spool-ingest).
# One image means one build, one tag and one scan per release, and the three services can
# never run different builds of the shared code by accident.
#
#   make image                      # = docker build -t spool-live:$(IMAGE_TAG) .
#   docker build --build-arg RUST_VERSION=1.95 -t spool-live:dev .
#
# The runtime is distroless (glibc, CA certificates, tzdata, no shell, no package manager)
# and runs as the unprivileged user 65532; nothing is written to the root filesystem, so
# it runs with readOnlyRootFilesystem (the manifests mount an emptyDir on /tmp anyway).

ARG RUST_VERSION=1.95

############################################################
# build: the workspace's release binaries
############################################################
# bookworm: the same glibc (2.36) as the distroless debian12 runtime below.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds (BuildKit); the binaries are
# copied out of the cached target/ in the same step. Debug info is stripped (about 80 MB
# down to 16 MB per binary); symbols stay, so backtraces still name the functions.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p spool-ingest -p spool-delivery -p spool-revalidator --bins \
    && mkdir -p /out \
    && cp target/release/spool-ingest target/release/spool-delivery \
          target/release/spool-revalidator /out/

############################################################
# runtime
############################################################
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="spool-live" \
      org.opencontainers.image.description="Spool Live: spool-ingest, spool-delivery, spool-revalidator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/spool-ingest /out/spool-delivery /out/spool-revalidator /usr/local/bin/
USER 65532:65532
# spool-ingest 8080, spool-delivery 8081, spool-revalidator 8082 (SPOOL_LISTEN)
EXPOSE 8080 8081 8082
CMD ["/usr/local/bin/spool-ingest"]
