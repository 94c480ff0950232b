"""The [registries] table: a username and a password secret for each registry host the apps pull from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployer.config.fields import only_keys, typed
from deployer.config.model import RegistryAuth
from deployer.config.secrets import read_secret
from deployer.errors import ConfigError


def parse_registries(
    data: Any, *, path: Path, base: Path, environ: Mapping[str, str], secret_env_names: set[str]
) -> dict[str, RegistryAuth]:
    if not isinstance(data, dict):
        raise ConfigError("must be a table of registry hosts", path=path, key="registries")
    registries = {}
    for host, entry in data.items():
        where = f"registries.{host}"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, key=where)
        # "password" is allowed here only so read_secret can explain why it is refused.
        only_keys(entry, {"username", "password", "password_file", "password_env"}, path=path, where=where)
        username = typed(entry, "username", str, None, path=path, key=f"{where}.username")
        if not username:
            raise ConfigError("is required", path=path, key=f"{where}.username")
        password = read_secret(
            entry, "password", path=path, base=base, environ=environ, where=where, secret_env_names=secret_env_names
        )
        registries[host] = RegistryAuth(registry=host, username=username, password=password)
    return registries
