# A stand-in for the public `rust:1.95-slim-bookworm` image, for machines without Docker Hub:
# Debian slim plus rustup, laid out like the official image (/usr/local/cargo). Built by
# `cargo xtask container-test` only when that tag is missing. rustup-init comes straight from
# static.rust-lang.org (the host that also serves the toolchains).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev; \
    case "$(dpkg --print-architecture)" in \
        amd64) triple=x86_64-unknown-linux-gnu ;; \
        arm64) triple=aarch64-unknown-linux-gnu ;; \
        *) echo "unsupported architecture" >&2; exit 1 ;; \
    esac; \
    curl --proto '=https' --tlsv1.2 -sSf -o /tmp/rustup-init \
        "https://static.rust-lang.org/rustup/dist/$triple/rustup-init"; \
    chmod +x /tmp/rustup-init; \
    /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain 1.95.0; \
    rm -rf /tmp/rustup-init /var/lib/apt/lists/*; \
    rustc --version
