# A stand-in for the public `haproxy:2.6-bookworm` image, for machines without Docker Hub:
# Debian's HAProxy 2.6 on Debian slim, reading /usr/local/etc/haproxy/haproxy.cfg as the
# official image does. Built by `cargo xtask cluster-test` only when that tag is missing.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /usr/local/etc/haproxy
USER haproxy
EXPOSE 8080
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
