"""The hooks folders, checked at load: a configured folder exists, and each hook in it runs under its exact name.

A hook the deploy skips removes a gate (a smoke test, a migration) without a word, so a missing folder, a hook
without the exec bit or one named `post-healthy.sh` is a config error naming the file, not a quiet skip later.
"""

from __future__ import annotations

import os
from pathlib import Path

from deployer.config.model import HOOK_NAMES
from deployer.errors import ConfigError


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
    if not folder.exists():
        if configured:
            raise ConfigError(f"names no folder: {folder}", path=path, app=app, key=key)
        return
    if not folder.is_dir():
        raise ConfigError(f"is not a folder: {folder}", path=path, app=app, key=key)
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"cannot list {folder}: {exc.strerror}", path=path, app=app, key=key) from None
    for entry in entries:
        problem = hook_file_problem(entry.name, is_file=entry.is_file(), executable=os.access(entry, os.X_OK))
        if problem is not None:
            raise ConfigError(f"{entry} {problem}", path=path, app=app, key=key)
