"""What reports a deploy's progress: the GitHub token(s) and each app's environment, and the [[notify]] targets.

Read by root's `load` (so `deployer check` sees it all) and, alone with [deployer], by `load_reports`, which the
unprivileged report loop uses: it never reads the worker's registry passwords, asset tokens or app environments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import REPOSITORY_RE, duration, only_keys, typed
from deployer.config.model import GithubReport, NotifyTarget, ReportsConfig
from deployer.config.secrets import read_secret
from deployer.errors import ConfigError

NOTIFY_EVENTS = (
    "deploy.succeeded",
    "deploy.failed",
    "rollback",
    "canary.started",
    "canary.promoted",
    "canary.aborted",
    "rollout.stopped",
    "rollout.aborted",
    "rollout.finished",
    "fault.open",
)
DEFAULT_NOTIFY_EVENTS = ("deploy.failed", "rollback", "canary.aborted", "rollout.stopped", "rollout.aborted")
NOTIFY_KEYS = {"name", "url", "url_file", "url_env", "format", "secret_file", "secret_env", "events"}
FORMATS = ("json", "slack")
URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s#]*)?$")
ENVIRONMENT_RE = re.compile(r"^[A-Za-z0-9_.:/ -]{1,255}$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_TIMEOUT = 10.0


def parse_reports(
    data: Mapping[str, Any], *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> ReportsConfig:
    server = data.get("server", {})
    server = server if isinstance(server, Mapping) else {}

    def secret(entry: Mapping[str, Any], name: str, where: str, *, required: bool = False) -> str | None:
        return read_secret(
            entry,
            name,
            path=path,
            base=base,
            environ=environ,
            where=where,
            secret_env_names=secret_env_names,
            required=required,
        )

    server_token = secret(server, "github_token", "server")
    github = {}
    apps = data.get("apps", {})
    for name, app in (apps if isinstance(apps, Mapping) else {}).items():
        if not isinstance(app, Mapping):
            continue  # the app's own parse says what is wrong with it
        github_report = _app_report(name, app, server_token, secret, path=path)
        if github_report is not None:
            github[name] = github_report
    notify_data = data.get("notify", [])
    if not isinstance(notify_data, list):
        raise ConfigError("must be an array of [[notify]] tables", path=path, key="notify")
    targets = tuple(_notify_target(n, entry, secret, path=path) for n, entry in enumerate(notify_data))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError("two [[notify]] targets have the same name", path=path, key="notify")
    return ReportsConfig(
        github=github,
        notify=targets,
        timeout=duration(server, "report_timeout", DEFAULT_TIMEOUT, path=path, key="server.report_timeout"),
    )


def _app_report(name: str, app: Mapping[str, Any], server_token: str | None, secret: Any, *, path: Path):
    where = f"apps.{name}"
    own = {"github_environment", "environment_url", "github_token_file", "github_token_env"} & set(app)
    repository = app.get("repository")
    if own and not repository:
        raise ConfigError(
            f"{sorted(own)[0]} needs the app's repository: deployments are reported to it", path=path, app=name
        )
    if not isinstance(repository, str) or not REPOSITORY_RE.fullmatch(repository):
        return None  # none, or one the app's own parse refuses
    token = secret(app, "github_token", where) or server_token
    if token is None:
        return None
    environment = typed(app, "github_environment", str, name, path=path, key="github_environment", app=name)
    if not ENVIRONMENT_RE.fullmatch(environment):
        raise ConfigError(
            "must be 1 to 255 letters, digits, spaces or . _ - : /", path=path, app=name, key="github_environment"
        )
    url = typed(app, "environment_url", str, None, path=path, key="environment_url", app=name)
    if url is not None and not URL_RE.fullmatch(url):
        raise ConfigError("must be an http(s) URL", path=path, app=name, key="environment_url")
    return GithubReport(repository=repository, environment=environment, environment_url=url, token=token)


def _notify_target(n: int, entry: Any, secret: Any, *, path: Path) -> NotifyTarget:
    where = f"notify[{n}]"
    if not isinstance(entry, Mapping):
        raise ConfigError("must be a table", path=path, key=where)
    only_keys(entry, NOTIFY_KEYS, path=path, where=where)
    name = typed(entry, "name", str, str(n), path=path, key=f"{where}.name")
    if not NAME_RE.fullmatch(name):
        raise ConfigError("must be 1 to 64 letters, digits, '.', '_' or '-'", path=path, key=f"{where}.name")
    # A Slack incoming webhook's URL is its credential: url_file or url_env keep it a secret like the others.
    secret_url = {"url_file", "url_env"} & set(entry)
    if secret_url and "url" in entry:
        raise ConfigError("set only one of url, url_file and url_env", path=path, key=where)
    url_key = f"{where}.{sorted(secret_url)[0]}" if secret_url else f"{where}.url"
    url = secret(entry, "url", where) if secret_url else typed(entry, "url", str, None, path=path, key=url_key)
    if url is None:
        raise ConfigError("is required: the http(s) URL notifications are posted to", path=path, key=url_key)
    if not URL_RE.fullmatch(url):
        raise ConfigError("must be an http(s) URL", path=path, key=url_key)
    fmt = typed(entry, "format", str, "json", path=path, key=f"{where}.format")
    if fmt not in FORMATS:
        raise ConfigError(f"must be one of {', '.join(FORMATS)}", path=path, key=f"{where}.format")
    events = entry.get("events", list(DEFAULT_NOTIFY_EVENTS))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ConfigError('must be a list of event names, or ["*"] for all', path=path, key=f"{where}.events")
    unknown = [e for e in events if e != "*" and e not in NOTIFY_EVENTS]
    if unknown:
        raise ConfigError(
            f"unknown event {unknown[0]!r} (known: {', '.join(NOTIFY_EVENTS)}, or *)", path=path, key=f"{where}.events"
        )
    return NotifyTarget(
        name=name,
        url=url,
        format=fmt,
        events=frozenset(events),
        secret=secret(entry, "secret", where),
        url_is_secret=bool(secret_url),
    )
