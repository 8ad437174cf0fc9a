# recohost: the server, the bundled plugins and the shipped experiment, built from source.
#
#   docker build -t recohost .
#   docker run -p 8080:8080 -v recohost-data:/data recohost
#
# The base images are build arguments with the usual public defaults. Where Docker Hub is not
# reachable, `cargo xtask container-test` builds look-alikes locally under these same names.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# The toolchain: the WebAssembly target and cargo-chef, kept until the Rust image changes.
FROM ${RUST_IMAGE} AS chef
RUN rustup target add wasm32-wasip2 \
    && cargo install cargo-chef --locked --version 0.1.77 \
    && rm -rf /usr/local/cargo/registry
WORKDIR /src

# The recipe: every manifest and Cargo.lock, nothing else. It changes only when dependencies
# do, so an edit to recohost's own code leaves the next stage's dependency layer cached.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# The wasm32 rustflags (SIMD) must be the same for the dependencies and the plugins.
COPY .cargo .cargo
COPY --from=planner /src/recipe.json recipe.json
# The dependencies alone, built exactly as the commands below build them: the server, then
# one plugin per invocation (as `cargo xtask plugins` does, for its features' sake).
RUN cargo chef cook --release --locked --recipe-path recipe.json -p recohost --bin recohost \
    && for plugin in popularity collaborative content hybrid ratings; do \
        cargo chef cook --release --locked --recipe-path recipe.json \
            --target wasm32-wasip2 -p "$plugin" || exit 1; \
    done
COPY . .
RUN cargo xtask plugins \
    && cargo build --release --locked -p recohost --bin recohost \
    && mkdir -p /out/usr/local/bin /out/opt/recohost/plugins \
    && cp target/release/recohost /out/usr/local/bin/ \
    && cp dist/plugins/*.wasm /out/opt/recohost/plugins/

FROM ${RUNTIME_IMAGE}
# What does not change with recohost's code first, so that a rebuild after a code change
# redoes only the last layer (under Docker's vfs storage driver each layer is a copy of the
# whole image, so layers cost seconds each).
RUN groupadd --system --gid 10001 recohost \
    && useradd --system --uid 10001 --gid recohost --home-dir /data --shell /usr/sbin/nologin recohost \
    && mkdir -p /data /opt/recohost/plugins /etc/recohost/experiments \
    && chown recohost:recohost /data
# Settings: RECOHOST_* and REDIS_URL override the config file (docs/configuration.md).
ENV RECOHOST_CONFIG=/etc/recohost/recohost.toml \
    RECOHOST_BIND=0.0.0.0:8080 \
    RECOHOST_DATA_DIR=/data \
    RECOHOST_LOG=info
VOLUME ["/data"]
EXPOSE 8080
USER recohost
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 \
    CMD ["recohost", "healthcheck"]
CMD ["recohost", "serve"]
COPY docker/recohost.toml /etc/recohost/recohost.toml
COPY experiments/ /etc/recohost/experiments/
# The server (/usr/local/bin/recohost) and the plugins (/opt/recohost/plugins/) in one layer.
COPY --from=build /out/ /
