"""Small configs for unit tests: a state folder under tmp_path and apps on made-up ports."""

from __future__ import annotations

import tomllib
from pathlib import Path

from deployer import config as config_module
from deployer.config import Config


def app_toml(name: str, external: int, *, extra: str = "") -> str:
    """One app `name` with image registry.example:5000/<name> on external, external+1 (blue), external+2 (green)."""
    return (f'[apps.{name}]\nimage = "registry.example:5000/{name}"\n{extra}'
            f"[[apps.{name}.ports]]\nexternal = {external}\ncontainer = 80\nblue = {external + 1}\n"
            f"green = {external + 2}\n")


ASSET_SITE = app_toml("site", 9000, extra='repository = "acme/site"\n[apps.site.asset]\nname = "image.tar"\n')


def make_config(tmp_path: Path, *apps: str, server: str = "") -> Config:
    text = f'[deployer]\nstate_dir = "{tmp_path / "state"}"\n[server]\n{server}\n' + "".join(apps)
    return config_module.parse(tomllib.loads(text), path=tmp_path / "deployer.toml", environ={})
