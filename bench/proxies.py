"""The proxy hops the data-path part compares with DNAT: HAProxy and nginx configs and commands.

Pure: renders text and argument lists. Both proxies get one worker, keep-alive to the backend
and no logging per request, which is how either would be set up in front of a single app;
they listen on the given addresses only (loopback and the outside namespace's host end).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

Address = tuple[str, int]


def haproxy_config(listen: Sequence[Address], backend: Address) -> str:
    binds = [f"    bind {host}:{port}" for host, port in listen]
    return "\n".join(
        [
            "global",
            "    nbthread 1",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode http",
            "    option http-keep-alive",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "",
            "frontend bench",
            *binds,
            "    default_backend app",
            "",
            "backend app",
            "    http-reuse always",
            f"    server app {backend[0]}:{backend[1]}",
            "",
        ]
    )


def haproxy_argv(config: Path) -> list[str]:
    # -db: stay in the foreground, so the bench owns the process and stops it by its pid.
    return ["haproxy", "-db", "-f", str(config)]


def nginx_config(listen: Sequence[Address], backend: Address, workdir: Path) -> str:
    listens = [f"        listen {host}:{port};" for host, port in listen]
    temp = {name: workdir / f"{name}-temp" for name in ("client_body", "proxy", "fastcgi")}
    return "\n".join(
        [
            "worker_processes 1;",
            "daemon off;",
            f"pid {workdir / 'nginx.pid'};",
            f"error_log {workdir / 'nginx-error.log'} warn;",
            "events { worker_connections 4096; }",
            "http {",
            "    access_log off;",
            *(f"    {name}_temp_path {path};" for name, path in temp.items()),
            "    upstream app {",
            f"        server {backend[0]}:{backend[1]};",
            "        keepalive 64;",
            "    }",
            "    server {",
            *listens,
            "        location / {",
            "            proxy_pass http://app;",
            "            proxy_http_version 1.1;",
            '            proxy_set_header Connection "";',
            "        }",
            "    }",
            "}",
            "",
        ]
    )


def nginx_argv(config: Path, workdir: Path) -> list[str]:
    # -e: the error log from the first moment, before the config names one (not /var/log/nginx).
    return ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(config)]
