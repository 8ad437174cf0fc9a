# recohost: the server, the bundled plugins and the shipped experiment, built from source.
#
#   docker build -t recohost .
#   docker run -p 8080:8080 -v recohost-data:/data recohost
#
# The base images are build arguments with the usual public defaults. Where Docker Hub is not
# reachable, `cargo xtask container-test` builds look-alikes locally under these same names.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
# One plugin per cargo invocation (xtask), then the server alone: the image needs no tests.
RUN cargo xtask plugins \
    && cargo build --release --locked -p recohost --bin recohost \
    && mkdir -p /out/plugins \
    && cp target/release/recohost /out/ \
    && cp dist/plugins/*.wasm /out/plugins/

FROM ${RUNTIME_IMAGE}
RUN groupadd --system --gid 10001 recohost \
    && useradd --system --uid 10001 --gid recohost --home-dir /data --shell /usr/sbin/nologin recohost \
    && mkdir -p /data /opt/recohost/plugins /etc/recohost/experiments \
    && chown recohost:recohost /data
COPY --from=build /out/recohost /usr/local/bin/recohost
COPY --from=build /out/plugins/ /opt/recohost/plugins/
COPY docker/recohost.toml /etc/recohost/recohost.toml
COPY experiments/ /etc/recohost/experiments/

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
