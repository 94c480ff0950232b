"""An app's environment: its env files in Docker's format, in order, then `env` on top."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import ENV_NAME_RE, absolute_path
from deployer.errors import ConfigError


def app_env(app: str, data: Mapping[str, Any], *, path: Path, base: Path) -> dict[str, str]:
    """Env files first, in order, then `env` on top, so the config file has the last word."""
    env: dict[str, str] = {}
    files = data.get("env_files", [])
    if not isinstance(files, list):
        raise ConfigError("must be a list of file paths", path=path, app=app, key="env_files")
    for i, name in enumerate(files):
        key = f"env_files[{i}]"
        env_path = absolute_path(name, base, path=path, key=key, app=app)
        try:
            text = env_path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {env_path}: {exc.strerror}", path=path, app=app, key=key) from None
        try:
            env.update(parse_env_file(text))
        except ValueError as exc:
            raise ConfigError(f"{env_path}: {exc}", path=path, app=app, key=key) from None
    inline = data.get("env", {})
    if not isinstance(inline, dict):
        raise ConfigError('must be a table of NAME = "value"', path=path, app=app, key="env")
    for name, value in inline.items():
        if not ENV_NAME_RE.fullmatch(name):
            raise ConfigError("not a valid environment variable name", path=path, app=app, key=f"env.{name}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError("must be a string or a number", path=path, app=app, key=f"env.{name}")
        env[name] = str(value)
    return env


def parse_env_file(text: str) -> dict[str, str]:
    """Docker's env-file format: NAME=value lines, '#' comments, no shell expansion or quoting."""
    env = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not ENV_NAME_RE.fullmatch(name):
            raise ValueError(f"line {number}: expected NAME=value")
        env[name] = value
    return env
