# A stand-in for the public `rust:1.95-slim-bookworm` image, for machines without Docker Hub:
# Debian slim plus rustup's installer, laid out like the official image (/usr/local/cargo).
# Built by `cargo xtask container-test` only when that tag is missing.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --no-modify-path --profile minimal --default-toolchain 1.95.0 \
    && rm -rf /var/lib/apt/lists/* \
    && rustc --version
