"""Tag validation: a tag reaches Docker, hooks and logs, so it must be exactly a Docker tag."""

from __future__ import annotations

import re

from deployer.config import AppConfig
from deployer.errors import InvalidTag

# Docker's grammar for a tag: up to 128 word characters, dots and dashes, not starting with . or -.
DOCKER_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_tag(app: AppConfig, tag: object) -> str:
    """Return the tag if it is a valid Docker tag that matches the app's pattern; raise InvalidTag."""
    if not isinstance(tag, str) or not DOCKER_TAG_RE.fullmatch(tag):
        shown = repr(tag)[:60]
        raise InvalidTag(f"{shown} is not a valid Docker tag", app=app.name)
    if app.tag_pattern is not None and not re.fullmatch(app.tag_pattern, tag):
        raise InvalidTag(
            f"tag {tag!r} does not match the pattern of app {app.name!r}: {app.tag_pattern}", app=app.name, tag=tag
        )
    return tag
