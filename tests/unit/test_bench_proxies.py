"""The proxy hops' configs and commands, compared as exact text."""

from __future__ import annotations

from pathlib import Path

from bench.proxies import haproxy_argv, haproxy_config, nginx_argv, nginx_config


def test_haproxy_listens_where_told_with_one_thread_and_keep_alive_to_the_backend():
    assert (
        haproxy_config([("127.0.0.1", 24046), ("198.18.7.1", 24046)], ("172.19.0.2", 8080))
        == """\
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend bench
    bind 127.0.0.1:24046
    bind 198.18.7.1:24046
    default_backend app

backend app
    http-reuse always
    server app 172.19.0.2:8080
"""
    )
    assert haproxy_argv(Path("/tmp/x/haproxy.cfg")) == ["haproxy", "-db", "-f", "/tmp/x/haproxy.cfg"]


def test_nginx_keeps_every_file_in_its_workdir_and_reuses_backend_connections():
    work = Path("/tmp/w")
    assert (
        nginx_config([("127.0.0.1", 24047)], ("172.19.0.2", 8080), work)
        == """\
worker_processes 1;
daemon off;
pid /tmp/w/nginx.pid;
error_log /tmp/w/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path /tmp/w/client_body-temp;
    proxy_temp_path /tmp/w/proxy-temp;
    fastcgi_temp_path /tmp/w/fastcgi-temp;
    upstream app {
        server 172.19.0.2:8080;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:24047;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
"""
    )
    assert nginx_argv(work / "nginx.conf", work) == [
        "nginx",
        "-p",
        "/tmp/w",
        "-e",
        "/tmp/w/nginx-error.log",
        "-c",
        "/tmp/w/nginx.conf",
    ]
