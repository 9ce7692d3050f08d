# One image, 12 AWS regions: region-supervisor as PID 1 over the 12 regional
# finfocus-plugin-aws-public binaries (ports 8001-8012, metrics and health on 9090).
#
# Sources (build args), so the image also builds without network:
#   SUPERVISOR_SOURCE=build    compile the static supervisor in a Rust stage (default; RUST_IMAGE)
#   SUPERVISOR_SOURCE=context  take dist/${TARGETARCH}/region-supervisor from the build context
#   PLUGINS_SOURCE=download    download and verify the 12 release tarballs of VERSION (default)
#   PLUGINS_SOURCE=context     take dist/${TARGETARCH}/plugins/finfocus-plugin-aws-public-<region>
# BuildKit builds only the stages the chosen sources need. Every RUN happens in a stage on the
# build platform (the supervisor is cross-compiled, the plugins are only downloaded), and the
# final stage has no RUN at all, so a multi-platform build (linux/amd64,linux/arm64) needs no
# emulation. `--target supervisor-image` builds the same image without the plugins, also for
# linux/arm/v7 (the plugins are released for amd64 and arm64 only).

# checkov:skip=CKV_DOCKER_7:every FROM names a build arg whose default has a version tag (BASE_IMAGE=alpine:3.19, RUST_IMAGE=rust:1-alpine) or a stage picked by one; checkov does not expand ARG defaults
ARG BASE_IMAGE=alpine:3.19
ARG RUST_IMAGE=rust:1-alpine
ARG SUPERVISOR_SOURCE=build
ARG PLUGINS_SOURCE=download

# --- the supervisor ---------------------------------------------------------------------------
# Any Rust image with rustup and a C toolchain for the build scripts: the official
# rust:1-alpine (the default; the Alpine release of this stage does not matter, its output is
# static), or a local one (scripts/docker-rust-builder.sh makes one from the machine's own
# toolchain, for offline builds).
# hadolint ignore=DL3029
FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS supervisor-build
ARG TARGETARCH
ARG TARGETVARIANT
# The official Alpine images carry gcc but not musl's C runtime files and headers, which the
# build scripts link with; Debian-based and local builders have a C toolchain already.
# hadolint ignore=DL3018
RUN if command -v apk >/dev/null; then apk add --no-cache musl-dev; fi
# aarch64 and armv7 link with rust-lld (no cross C toolchain; aarch64's is in .cargo/config.toml).
ENV CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=rust-lld
# The static musl target of the target platform and its std, from rustup (the plain way, as on
# every official image). Where rustup has no std for the target but the builder has
# cargo-zigbuild and rust-src, std is built from source (-Zbuild-std) and linked against zig's
# musl instead. The choice goes to /usr/local/supervisor-target for the builds below.
RUN case "${TARGETARCH}/${TARGETVARIANT}" in \
      amd64/*) target=x86_64-unknown-linux-musl ;; \
      arm64/*) target=aarch64-unknown-linux-musl ;; \
      arm/v7) target=armv7-unknown-linux-musleabihf ;; \
      *) echo "unsupported platform ${TARGETARCH}/${TARGETVARIANT} (amd64, arm64, arm/v7)" >&2; exit 1 ;; \
    esac \
    && if rustup target add "$target"; then \
         build="cargo build"; \
       elif command -v cargo-zigbuild >/dev/null && [ -d "$(rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then \
         echo "no rustup std for $target here: std from source, linked with zig" >&2; \
         build="env -u CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER RUSTC_BOOTSTRAP=1 RUSTFLAGS=-Clink-self-contained=no cargo zigbuild -Zbuild-std=std,panic_abort"; \
       else \
         exit 1; \
       fi \
    && printf 'target=%s\nbuild="%s --release --locked --bin region-supervisor --target %s"\n' \
         "$target" "$build" "$target" > /usr/local/supervisor-target
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY .cargo ./.cargo
# The dependencies (and std, where it is built from source) in a layer of their own, rebuilt
# only when Cargo.toml or Cargo.lock change: built against stub sources whose own output is
# removed right after, so a change in src/ recompiles the supervisor alone. (target and build
# come from the file the step above wrote.)
# hadolint ignore=SC2154
RUN . /usr/local/supervisor-target \
    && mkdir src standin \
    && echo 'fn main() {}' > src/main.rs \
    && cp src/main.rs standin/main.rs \
    && $build \
    && rm -rf src standin "target/$target/release/region-supervisor" \
       "target/$target/release/deps/region_supervisor-"* "target/$target/release/.fingerprint/region-supervisor-"*
COPY src ./src
COPY standin ./standin
# hadolint ignore=SC2154
RUN . /usr/local/supervisor-target \
    && $build \
    && mkdir -p /out && cp "target/$target/release/region-supervisor" /out/region-supervisor

# `docker build --target supervisor-binary --platform linux/arm/v7 -o DIR .` puts the static
# supervisor of any platform into DIR, without a Rust toolchain on the machine.
FROM scratch AS supervisor-binary
COPY --from=supervisor-build /out/region-supervisor /region-supervisor

FROM scratch AS supervisor-context
ARG TARGETARCH
COPY dist/${TARGETARCH}/region-supervisor /out/region-supervisor

# hadolint ignore=DL3006
FROM supervisor-${SUPERVISOR_SOURCE} AS supervisor

# --- the regional plugins -----------------------------------------------------------------------
# hadolint ignore=DL3006,DL3029
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS plugins-download
ARG VERSION
ARG TARGETARCH
# curl is needed here only; it never reaches the final image.
# hadolint ignore=DL3018
RUN apk add --no-cache curl
COPY docker/fetch-plugins /usr/local/bin/fetch-plugins
RUN test -n "${VERSION}" || { echo "build arg VERSION (the plugin release, e.g. v0.4.2) is required with PLUGINS_SOURCE=download" >&2; exit 1; } \
    && fetch-plugins "${VERSION}" "${TARGETARCH}" /out/plugins

FROM scratch AS plugins-context
ARG TARGETARCH
COPY dist/${TARGETARCH}/plugins/ /out/plugins/

# hadolint ignore=DL3006
FROM plugins-${PLUGINS_SOURCE} AS plugins

# --- user `plugin`, 65532:65532 ------------------------------------------------------------------
# The base's own passwd and group files plus one line each, written on the build platform (the
# files are the same on every architecture of a base image) and by hand, so it works on any base
# (Alpine's adduser and Debian's useradd take different flags).
# hadolint ignore=DL3006,DL3029
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS users
RUN mkdir -p /out \
    && { cat /etc/passwd; echo "plugin:x:65532:65532:plugin:/nonexistent:/sbin/nologin"; } > /out/passwd \
    && { cat /etc/group; echo "plugin:x:65532:"; } > /out/group

# --- the supervisor-only image (`docker build --target supervisor-image`) ---------------------
# The base, user `plugin`, the entrypoint shim and the static supervisor, nothing else: for
# other programs supervised the same way (SUPERVISOR_COMMAND), e.g. binaries mounted at run time.
# hadolint ignore=DL3006
FROM ${BASE_IMAGE} AS supervisor-image
ARG VERSION=context
LABEL org.opencontainers.image.title="region-supervisor" \
      org.opencontainers.image.description="region-supervisor: a multi-process container entrypoint (PID 1) with log tagging, restarts, a TCP relay and Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=users /out/passwd /out/group /etc/
COPY --from=supervisor /out/region-supervisor /usr/local/bin/region-supervisor
COPY docker/entrypoint /usr/local/bin/entrypoint

USER 65532:65532
EXPOSE 9090

# Every 30s, after a 60s start period (12 plugins loading ~150 MB of pricing data each, and
# the supervisor's own 10s startup timeout plus a restart), unhealthy after 3 misses. The
# subcommand probes the regions in parallel, each bounded by HEALTH_CHECK_TIMEOUT (5s), so it
# finishes well inside the 10s timeout; it exits 0 or 1 only, as Docker expects.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/region-supervisor", "healthcheck", "--quiet"]

ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["run"]

# --- the image: the supervisor and the 12 regional plugins (the default, last stage) ------------
FROM supervisor-image
ARG VERSION=context
LABEL org.opencontainers.image.title="finfocus-plugin-aws-public (12 regions)" \
      org.opencontainers.image.description="12 regional finfocus-plugin-aws-public binaries under region-supervisor" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=plugins /out/plugins/ /usr/local/bin/

EXPOSE 8001-8012 9090
ENV FINFOCUS_PLUGIN_WEB_ENABLED=true FINFOCUS_PLUGIN_HEALTH_ENDPOINT=true
