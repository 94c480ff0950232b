"""The hooks folders, checked at load: a configured folder exists, and each hook in it runs under its exact name.

A hook the deploy skips removes a gate (a smoke test, a migration) without a word, so a missing folder, a hook
without the exec bit or one named `post-healthy.sh` is a config error naming the file, not a quiet skip later.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deployer.config.model import HOOK_NAMES, AppConfig, Settings
from deployer.errors import ConfigError


@dataclass(frozen=True)
class HooksFolder:
    """A folder the deploys run hooks from, and the key that names it (with its app, for an app's own)."""

    folder: Path
    key: str  # "deployer.hooks_dir", or "hooks_dir" of `app`
    configured: bool  # named in the config; the default folder may be absent (no hooks)
    app: str | None = None


def hooks_folders(settings: Settings, apps: Mapping[str, AppConfig], *, configured: bool) -> list[HooksFolder]:
    """The folders the deploys will run hooks from: the global one unless every app has its own, and each app's.

    `configured`: whether [deployer] names hooks_dir (else it is the default folder).
    """
    folders = []
    if any(app.hooks_dir is None for app in apps.values()) or configured:
        folders.append(HooksFolder(settings.hooks_dir, "deployer.hooks_dir", configured))
    folders += [
        HooksFolder(app.hooks_dir, "hooks_dir", True, app=name)
        for name, app in apps.items()
        if app.hooks_dir is not None
    ]
    return folders


def hooks_folder_problem(folder: Path, *, exists: bool, is_dir: bool, configured: bool) -> str | None:
    """What is wrong with a hooks folder itself, or None: missing when configured, or not a folder (pure)."""
    if not exists:
        return f"names no folder: {folder}" if configured else None
    if not is_dir:
        return f"is not a folder: {folder}"
    return None


def hook_file_problem(name: str, *, is_file: bool, executable: bool) -> str | None:
    """What is wrong with the entry `name` of a hooks folder, or None: a table of the cases, pure."""
    if name in HOOK_NAMES:
        if not is_file:
            return "is not a file: a hook is an executable file"
        if not executable:
            return "is not executable: a deploy would skip it (chmod +x it)"
        return None
    stem = name.split(".", 1)[0]
    if stem in HOOK_NAMES and not name.startswith("."):
        return f"is never run: a hook is named exactly {stem!r}, without a suffix"
    return None


def check_hooks_dir(folder: Path, *, configured: bool, path: Path, key: str, app: str | None = None) -> None:
    """Raise ConfigError for a configured folder that is missing, or the first hook in it that would not run.

    The default folder may be absent (no hooks); when it exists, its hooks are checked all the same.
    """
    problem = hooks_folder_problem(folder, exists=folder.exists(), is_dir=folder.is_dir(), configured=configured)
    if problem is not None:
        raise ConfigError(problem, path=path, app=app, key=key)
    if not folder.exists():
        return
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot list {folder}: {exc.strerror}", path=path, app=app, key=key) from None
    for entry in entries:
        problem = hook_file_problem(entry.name, is_file=entry.is_file(), executable=os.access(entry, os.X_OK))
        if problem is not None:
            raise ConfigError(f"{entry} {problem}", path=path, app=app, key=key)
