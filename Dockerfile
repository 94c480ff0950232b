# The deployer's own image, for compose.yaml: the package and the netfilter tools it drives.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 990 deployer \
 && useradd --system --uid 990 --gid deployer --no-create-home --shell /usr/sbin/nologin deployer
COPY pyproject.toml README.md /src/
COPY deployer /src/deployer
RUN pip install --no-cache-dir /src && rm -rf /src
