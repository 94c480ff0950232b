"""The secrets a config names: `<name>_file` or `<name>_env`, never the secret itself."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import absolute_path, typed
from deployer.errors import ConfigError


def read_secret(
    entry: Mapping[str, Any],
    name: str,
    *,
    path: Path,
    base: Path,
    environ: Mapping[str, str],
    where: str,
    secret_env_names: set[str],
    required: bool = True,
) -> str | None:
    """Resolve `<name>_file` or `<name>_env`. A secret written inline in the config is refused."""
    if name in entry:
        raise ConfigError(
            f"secrets are not written in the config: use {name}_file or {name}_env", path=path, key=f"{where}.{name}"
        )
    file_key, env_key = f"{name}_file", f"{name}_env"
    if file_key in entry and env_key in entry:
        raise ConfigError(f"set only one of {file_key} and {env_key}", path=path, key=where)
    if file_key in entry:
        secret_path = absolute_path(entry[file_key], base, path=path, key=f"{where}.{file_key}")
        try:
            value = secret_path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read secret file {secret_path}: {exc.strerror}", path=path, key=f"{where}.{file_key}"
            ) from None
    elif env_key in entry:
        var = typed(entry, env_key, str, None, path=path, key=f"{where}.{env_key}")
        secret_env_names.add(var)
        value = environ.get(var, "")
        if not value:
            raise ConfigError(f"environment variable {var} is not set", path=path, key=f"{where}.{env_key}")
    elif required:
        raise ConfigError(f"one of {file_key} or {env_key} is required", path=path, key=where)
    else:
        return None
    if not value:
        raise ConfigError("secret is empty", path=path, key=f"{where}.{file_key}")
    return value
