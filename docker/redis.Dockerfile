# A stand-in for the public `redis:7.0-bookworm` image, for machines without Docker Hub:
# Debian's redis-server 7.0 on Debian slim, data in /data. Built by
# `cargo xtask container-test` only when that tag is missing.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
