# The deployer's own image, for compose.yaml: Debian's python3 with the package in a venv, and the netfilter tools
# it drives. Built by docker 20.10's builder and docker-compose 1.29 alike (no BuildKit-only syntax).
#
#   BASE     the Debian 12 image to start from (one made with `docker import` on a host that cannot pull)
#   OFFLINE  true: install the package and its dependencies from wheelhouse/ only, never from the index
#            (make it on a host that reaches the index: docs/production.md, "Compose")
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG OFFLINE=false
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv iptables nftables conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 990 deployer \
 && useradd --system --uid 990 --gid deployer --no-create-home --shell /usr/sbin/nologin deployer
COPY pyproject.toml README.md /src/
COPY deployer /src/deployer
COPY wheelhouse /src/wheelhouse
# Offline, the venv gets no pip of its own (ensurepip takes longer than the install): Debian's pip wheel, run as it
# is, installs into it from the wheels alone.
RUN if [ "$OFFLINE" = true ]; then \
        python3 -m venv --without-pip /opt/deployer/venv \
     && /opt/deployer/venv/bin/python3 "$(echo /usr/share/python-wheels/pip-*.whl)/pip" install --no-cache-dir \
            --no-index --find-links /src/wheelhouse deployer; \
    else \
        python3 -m venv /opt/deployer/venv && /opt/deployer/venv/bin/pip install --no-cache-dir /src; \
    fi \
 && rm -rf /src
ENV PATH=/opt/deployer/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
