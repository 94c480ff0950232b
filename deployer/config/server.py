"""The [server] table: the receiver's address, workers, limits, accounts, and the secrets it checks requests by."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import ACCOUNT_RE, KEY_ID_RE, duration, integer, only_keys, typed
from deployer.config.model import OperatorKey, ServerConfig
from deployer.config.secrets import read_secret
from deployer.errors import ConfigError

MIN_OPERATOR_SECRET = 16
SCOPES = ("operator", "fleet", "read")  # what each may do: deployer/receiver/scopes.py
# A Host header as a client sends it: a DNS name or an address (IPv6 in brackets), and a port unless it is the
# scheme's default.
HOST_NAME_RE = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?)(:[0-9]{1,5})?$")
LOOPBACK_NAMES = {"127.0.0.1": ("localhost",), "::1": ("localhost",)}


# An http(s) URL without credentials, query or fragment: github_api and public_url are shown and sent as they are.
HTTP_URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$")


def parse_server(
    data: Any, *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> ServerConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="server")
    allowed = {
        "listen",
        "workers",
        "max_body_bytes",
        "github_secret",
        "github_secret_file",
        "github_secret_env",
        "operators",
        "names",
        "job_timeout",
        "github_api",
        "public_url",
        "user",
        "group",
        "audit_token",
        "audit_token_file",
        "audit_token_env",
        # the report loop's (config/reports.py)
        "github_token",
        "github_token_file",
        "github_token_env",
        "report_timeout",
        "metrics_token",
        "metrics_token_file",
        "metrics_token_env",
        "metrics_allow",
    }
    only_keys(data, allowed, path=path, where="server")
    key = lambda k: f"server.{k}"  # noqa: E731
    defaults = ServerConfig()

    listen = typed(data, "listen", str, defaults.listen, path=path, key=key("listen"))
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        listen_port = int(port_text)
    except ValueError:
        listen_port = 0
    if not sep or not 1 <= listen_port <= 65535:
        raise ConfigError("must be ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8000", path=path, key=key("listen"))

    names = host_names(data, listen, path=path, key=key("names"))
    workers = integer(
        data.get("workers", defaults.workers),
        minimum=2,
        path=path,
        key=key("workers"),
        message="must be a whole number of at least 2, so one slow request never holds up the others",
    )
    max_body = integer(
        data.get("max_body_bytes", defaults.max_body_bytes),
        minimum=1024,
        path=path,
        key=key("max_body_bytes"),
        message="must be a whole number of bytes, at least 1024",
    )

    github_api = typed(data, "github_api", str, defaults.github_api, path=path, key=key("github_api"))
    if not HTTP_URL_RE.fullmatch(github_api):
        raise ConfigError("must be an http(s) URL such as https://api.github.com", path=path, key=key("github_api"))

    accounts = {}
    for name in ("user", "group"):
        value = typed(data, name, str, getattr(defaults, name), path=path, key=key(name))
        if value is not None and not ACCOUNT_RE.fullmatch(value):
            raise ConfigError("must be a user or group name", path=path, key=key(name))
        accounts[name] = value

    github_secret = read_secret(
        data,
        "github_secret",
        path=path,
        base=base,
        environ=environ,
        where="server",
        secret_env_names=secret_env_names,
        required=False,
    )

    def bearer_token(name: str) -> str | None:
        """An optional bearer token of [server] (`<name>_file` or `<name>_env`), long enough to resist guessing."""
        token = read_secret(
            data, name, path=path, base=base, environ=environ, where="server", secret_env_names=secret_env_names,
            required=False,
        )  # fmt: skip
        if token is not None and len(token) < MIN_OPERATOR_SECRET:
            raise ConfigError(
                f"the token is shorter than {MIN_OPERATOR_SECRET} characters; make one with: openssl rand -hex 32",
                path=path,
                key=key(name),
            )
        return token

    audit_token = bearer_token("audit_token")
    metrics_token = bearer_token("metrics_token")
    metrics_allow = networks(data.get("metrics_allow", []), path=path, key=key("metrics_allow"))

    operators_data = data.get("operators", {})
    if not isinstance(operators_data, dict):
        raise ConfigError("must be a table of [server.operators.KEY_ID] tables", path=path, key=key("operators"))
    operators = {}
    for key_id, entry in operators_data.items():
        where = f"server.operators.{key_id}"
        if not KEY_ID_RE.fullmatch(key_id):
            raise ConfigError("key ids are 1 to 64 letters, digits, '.', '_' or '-'", path=path, key=where)
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, key=where)
        only_keys(entry, {"secret", "secret_file", "secret_env", "scope", "apps"}, path=path, where=where)
        secret = read_secret(
            entry, "secret", path=path, base=base, environ=environ, where=where, secret_env_names=secret_env_names
        )
        if len(secret) < MIN_OPERATOR_SECRET:
            raise ConfigError(
                f"the secret is shorter than {MIN_OPERATOR_SECRET} characters; make one with: openssl rand -hex 32",
                path=path,
                key=where,
            )
        scope = typed(entry, "scope", str, "operator", path=path, key=f"{where}.scope")
        if scope not in SCOPES:
            raise ConfigError(f"must be one of {', '.join(SCOPES)}", path=path, key=f"{where}.scope")
        apps = key_apps(entry, path=path, key=f"{where}.apps")
        if scope == "fleet" and not apps:
            raise ConfigError(
                'a fleet key names the apps it may deploy: apps = ["web"]', path=path, key=f"{where}.apps"
            )
        operators[key_id] = OperatorKey(key_id=key_id, secret=secret, scope=scope, apps=apps)

    return ServerConfig(
        listen=listen,
        names=names,
        workers=workers,
        max_body_bytes=max_body,
        github_secret=github_secret,
        operators=operators,
        audit_token=audit_token,
        job_timeout=duration(data, "job_timeout", defaults.job_timeout, path=path, key=key("job_timeout")),
        github_api=github_api.rstrip("/"),
        user=accounts["user"],
        group=accounts["group"],
        metrics_token=metrics_token,
        metrics_allow=metrics_allow,
        public_url=parse_public_url(data, path=path),
    )


def parse_public_url(data: Mapping[str, Any], *, path: Path) -> str | None:
    """The address clients reach this server at (behind its TLS proxy): job pages are linked from GitHub's
    deployment statuses and the notifications under it. No query, fragment or credentials: it is shown to all."""
    value = typed(data, "public_url", str, None, path=path, key="server.public_url")
    if value is None:
        return None
    if not HTTP_URL_RE.fullmatch(value):
        raise ConfigError(
            "must be an http(s) URL such as https://deploy.example.com", path=path, key="server.public_url"
        )
    return value.rstrip("/")


def networks(value: Any, *, path: Path, key: str) -> tuple[str, ...]:
    """A list of networks in CIDR notation ("10.0.0.0/8"; a bare address is its /32 or /128), each exact: an
    address with host bits under its prefix ("10.0.0.1/8") is refused, not widened silently."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError('must be a list of networks, e.g. ["127.0.0.1/32", "10.0.0.0/8"]', path=path, key=key)
    found = []
    for item in value:
        try:
            found.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(f"{item[:64]!r} is not a network in CIDR notation: {exc}", path=path, key=key) from None
    return tuple(dict.fromkeys(found))


def host_names(data: Mapping[str, Any], listen: str, *, path: Path, key: str) -> tuple[str, ...]:
    """The Host headers this server answers to: `names`, or what `listen` implies.

    A signed request binds its Host, so a server that knows its own names refuses one signed for another
    server that shares the key. A server listening on every address cannot know them: it must be told.
    """
    if "names" not in data:
        host, _, port = listen.rpartition(":")
        address = ipaddress.ip_address(host.strip("[]"))
        if address.is_unspecified:
            raise ConfigError(
                f"listen = {listen!r} takes requests on every address, so the names this server "
                'answers to must be given: names = ["deploy.example.com", "10.0.0.1:8000"] '
                "(the Host header clients send)",
                path=path,
                key=key,
            )
        shown = f"[{address}]" if address.version == 6 else str(address)
        return (f"{shown}:{port}", *(f"{name}:{port}" for name in LOOPBACK_NAMES.get(str(address), ())))
    names = data["names"]
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ConfigError(
            'must be a list of the Host names clients use, e.g. ["deploy.example.com"]', path=path, key=key
        )
    for name in names:
        if not HOST_NAME_RE.fullmatch(name.lower()):
            raise ConfigError(
                f"{name[:80]!r} is not a Host header: a name or an address, and :PORT unless it is "
                "the scheme's default",
                path=path,
                key=key,
            )
    return tuple(dict.fromkeys(name.lower() for name in names))


def key_apps(entry: Mapping[str, Any], *, path: Path, key: str) -> tuple[str, ...] | None:
    """The apps a key is limited to; None: every app. Whether each exists is checked with the apps."""
    if "apps" not in entry:
        return None
    apps = entry["apps"]
    if not isinstance(apps, list) or not apps or not all(isinstance(app, str) and app for app in apps):
        raise ConfigError("must be a list of app names", path=path, key=key)
    return tuple(dict.fromkeys(apps))
