# One image, the regional finfocus-plugin-aws-public binaries of REGIONS (by default the 10 that
# upstream releases) under region-supervisor as PID 1: each region on its port of the table
# (8001-8012; us-gov-west-1 8010 and us-gov-east-1 8011 when they are baked in), metrics and
# health on 9090.
#
# Build args:
#   VERSION      the plugin release (tag, e.g. v0.4.2); required with PLUGINS_SOURCE=download
#   REGIONS      comma-separated regions to bake in, in the order wanted (default: the 10 regions
#                upstream releases, in table order; add us-gov-west-1 and us-gov-east-1 once a
#                release has them). The image's SUPERVISOR_REGIONS is this list, so `run`,
#                `healthcheck` and `regions` cover exactly what the image holds.
#   RELEASE_URL  where releases are (default: upstream's GitHub releases); the files are
#                RELEASE_URL/VERSION/<asset> and RELEASE_URL/VERSION/checksums.txt, so a mirror
#                or a local server (--network host, http://127.0.0.1:PORT) serves as well.
# Sources (build args), so the image also builds without network:
#   SUPERVISOR_SOURCE=build    compile the static supervisor in a Rust stage (default; RUST_IMAGE)
#   SUPERVISOR_SOURCE=context  take dist/${TARGETARCH}/region-supervisor from the build context
#   PLUGINS_SOURCE=download    download the REGIONS tarballs of VERSION, verify them (default)
#   PLUGINS_SOURCE=context     take dist/${TARGETARCH}/plugins/finfocus-plugin-aws-public-<region>
#                              of each region of REGIONS
# Either way the build fails naming every region of REGIONS that is unknown, missing or does
# not verify (docker/fetch-plugins). BuildKit builds only the stages the chosen sources need.
# Every RUN happens in a stage on the build platform (the supervisor is cross-compiled, the
# plugins are only downloaded or copied), and the final stage has no RUN at all, so a
# multi-platform build (linux/amd64,linux/arm64) needs no emulation. `--target
# supervisor-image` builds the same image without the plugins, also for linux/arm/v7 (the
# plugins are released for amd64 and arm64 only).

# checkov:skip=CKV_DOCKER_7:every FROM names a build arg whose default has a version tag (BASE_IMAGE=alpine:3.19, RUST_IMAGE=rust:1-alpine) or a stage picked by one; checkov does not expand ARG defaults
ARG BASE_IMAGE=alpine:3.19
ARG RUST_IMAGE=rust:1-alpine
ARG SUPERVISOR_SOURCE=build
ARG PLUGINS_SOURCE=download
# What upstream's release workflow builds (its internal/pricing/regions.yaml): the table less
# the two GovCloud regions. docker/fetch-plugins has the same default.
ARG REGIONS=us-east-1,us-west-2,eu-west-1,ap-southeast-1,ap-southeast-2,ap-northeast-1,ap-south-1,ca-central-1,sa-east-1,us-west-1
ARG RELEASE_URL=https://github.com/rshade/finfocus-plugin-aws-public/releases/download

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
# Both sources run docker/fetch-plugins on the base itself: it needs only the base's shell and
# its curl or busybox wget, sha256sum and tar, so this stage installs nothing and works on a
# base without a package manager (or a registry to fetch packages from).
# hadolint ignore=DL3006,DL3029
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS plugins-download
ARG VERSION
ARG TARGETARCH
ARG REGIONS
ARG RELEASE_URL
COPY docker/fetch-plugins /usr/local/bin/fetch-plugins
RUN test -n "${VERSION}" || { echo "build arg VERSION (the plugin release, e.g. v0.4.2) is required with PLUGINS_SOURCE=download" >&2; exit 1; } \
    && RELEASE_URL="${RELEASE_URL}" fetch-plugins "${VERSION}" "${TARGETARCH}" /out/plugins "${REGIONS}"

# The context's dist/ is bind-mounted, not copied into a layer: only the regions of REGIONS reach
# /out/plugins, and nothing is stored twice. (All of dist/, because older BuildKit frontends do
# not expand build args in mount options.)
# hadolint ignore=DL3006,DL3029
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS plugins-context
ARG TARGETARCH
ARG REGIONS
COPY docker/fetch-plugins /usr/local/bin/fetch-plugins
RUN --mount=type=bind,source=dist,target=/dist \
    fetch-plugins --from "/dist/${TARGETARCH}/plugins" "${TARGETARCH}" /out/plugins "${REGIONS}"

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

# Every 30s, after a 60s start period (up to 12 plugins loading ~150 MB of pricing data each, and
# the supervisor's own 10s startup timeout plus a restart), unhealthy after 3 misses. The
# subcommand probes the regions in parallel, each bounded by HEALTH_CHECK_TIMEOUT (5s), so it
# finishes well inside the 10s timeout; it exits 0 or 1 only, as Docker expects.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/region-supervisor", "healthcheck", "--quiet"]

ENTRYPOINT ["/usr/local/bin/entrypoint"]
CMD ["run"]

# --- the image: the supervisor and the plugins of REGIONS (the default, last stage) -------------
FROM supervisor-image
ARG VERSION=context
ARG REGIONS
LABEL org.opencontainers.image.title="finfocus-plugin-aws-public" \
      org.opencontainers.image.description="The regional finfocus-plugin-aws-public binaries (${REGIONS}) under region-supervisor" \
      org.opencontainers.image.version="${VERSION}"

COPY --from=plugins /out/plugins/ /usr/local/bin/

# The table's whole range, whatever REGIONS holds: a Dockerfile cannot derive ports from a list
# of names, and a port whose region is not baked in has no listener (connections are refused,
# never served by another region). The deployment files publish the baked regions' ports only.
EXPOSE 8001-8012 9090
# The baked regions, so run, healthcheck (the HEALTHCHECK) and regions agree with what is here.
ENV SUPERVISOR_REGIONS=${REGIONS}
ENV FINFOCUS_PLUGIN_WEB_ENABLED=true FINFOCUS_PLUGIN_HEALTH_ENDPOINT=true
