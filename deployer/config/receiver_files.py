"""The files the receiver opens as `[server] user`: the config itself, its secrets' files and the maintenance pages.

`load_receiver` reads these when gunicorn (and the maintenance responder) start unprivileged; the worker's own
files (registry passwords, asset tokens, env files) are read by root and are not listed. `deployer check` asks
whether that user can read each one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.config.fields import absolute_path
from deployer.config.model import Config


@dataclass(frozen=True)
class ReceiverFile:
    key: str  # the config key that names it ("server.github_secret_file"), or "config" for the file itself
    path: Path


def receiver_files(config: Config) -> list[ReceiverFile]:
    """Every file the receiver's part of `config` names, in the order the config lists them."""
    base = config.path.parent
    found = [ReceiverFile("config", config.path)]

    def named(table: Any, name: str, where: str) -> None:
        if isinstance(table, Mapping) and name in table:
            key = f"{where}.{name}"
            found.append(ReceiverFile(key, absolute_path(table[name], base, path=config.path, key=key)))

    data = config.raw
    server = data.get("server", {})
    named(server, "github_secret_file", "server")
    named(server, "audit_token_file", "server")
    named(server, "metrics_token_file", "server")
    for key_id, entry in (server.get("operators", {}) if isinstance(server, Mapping) else {}).items():
        named(entry, "secret_file", f"server.operators.{key_id}")
    for name, entry in data.get("apps", {}).items():
        named(entry, "github_secret_file", f"apps.{name}")
        named(entry, "maintenance_page", f"apps.{name}")
    named(data.get("console", {}), "session_key_file", "console")
    fleet = data.get("fleet", {})
    for name, entry in (fleet.get("releases", {}) if isinstance(fleet, Mapping) else {}).items():
        named(entry, "github_secret_file", f"fleet.releases.{name}")
    return found
