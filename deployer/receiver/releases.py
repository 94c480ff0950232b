"""What a GitHub delivery asks for: deploy a release, answer a ping, or nothing (and why). Pure.

The policy, in the order it is applied:

- `ping` answers pong when an app claims its repository; from a repository no app claims it is refused (404),
  so GitHub shows that hook red; an organization's hook is answered with the repositories this server deploys.
  Every other event but `release` is acknowledged and ignored.
- `repository.full_name` picks the app; a repository no app names is refused (404).
- A draft never deploys.
- `published` deploys a release; a prerelease only when the app sets `prereleases = true`.
- `released` deploys: GitHub sends it when a full release is published (with `published`, so the
  queue's dedupe makes that one deploy) and when a prerelease is promoted to a full release.
- `prereleased` adds nothing to the `published` delivery of the same release; `created`, `edited`,
  `unpublished` and `deleted` never deploy.
- When the app takes its image from a release asset, a release without that asset does not deploy.
- A release that deploys carries its `published_at`: the queue refuses it when a release published
  later is live or has succeeded, and queues it to wait when one is queued or running (a late delivery,
  a redelivery, two releases arriving out of order; `deployer/plan/release_order.py`).
  Publication order, not the id (a draft made long ago gets an old id when it is published) or
  version order (`tag_pattern` says which tags are allowed, not how they sort).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.config import AppConfig, Config
from deployer.errors import InvalidRequest, InvalidTag, UnknownApp
from deployer.plan.tags import DOCKER_TAG_RE, check_tag

SENDER_RE = re.compile(r"[^A-Za-z0-9_.\[\]-]")
PUBLISHED_AT_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")  # as GitHub sends it
IGNORED_ACTIONS = {
    "prereleased": "the 'published' delivery of the same release decides whether a prerelease deploys",
    "created": "a created release is a draft or is followed by 'published'",
    "edited": "editing a release does not deploy it",
    "unpublished": "unpublishing does not deploy anything (roll back with `deployer rollback` if needed)",
    "deleted": "deleting a release does not deploy anything",
}


@dataclass(frozen=True)
class AssetRef:
    """The asset ids the worker downloads; the URLs are built from the configured repository."""

    asset_id: int
    name: str
    size: int | None = None
    checksum_id: int | None = None


@dataclass(frozen=True)
class Decision:
    verdict: str  # "deploy", "ignore" or "pong"
    reason: str
    event: str
    action: str | None = None
    repository: str | None = None
    sender: str | None = None
    app: str | None = None
    tag: str | None = None
    release_id: int | None = None
    published_at: str | None = None
    asset: AssetRef | None = None
    repositories: tuple[str, ...] | None = None  # an organization's ping: the repositories this server deploys

    @property
    def actor(self) -> str:
        return f"github:{self.sender or 'unknown'}"


def valid_tag(app: AppConfig, tag: Any) -> str:
    """check_tag, and the whole string must match: a trailing newline is not part of a Docker tag."""
    if isinstance(tag, str) and not DOCKER_TAG_RE.fullmatch(tag):
        raise InvalidTag(f"{repr(tag)[:60]} is not a valid Docker tag", app=app.name)
    return check_tag(app, tag)


def sender_of(payload: Mapping[str, Any]) -> str | None:
    sender = payload.get("sender")
    login = sender.get("login") if isinstance(sender, Mapping) else None
    if not isinstance(login, str):
        return None
    return SENDER_RE.sub("", login)[:64] or None


def decide(event: str, payload: Mapping[str, Any], config: Config) -> Decision:
    """Apply the release policy; raise InvalidRequest (422), UnknownApp (404) or InvalidTag (422)."""
    repository = _repository(payload)
    sender = sender_of(payload)
    if event == "ping":
        return _pong(payload, repository, sender, config)
    if event != "release":
        return Decision(
            "ignore",
            f"event {event!r} is not acted on; only 'release' deploys",
            event,
            action=_optional_str(payload, "action"),
            repository=repository,
            sender=sender,
        )

    action = _required(payload, "action", str)
    release = _required(payload, "release", Mapping)
    tag = _required(release, "tag_name", str, "release.tag_name")
    draft = _required(release, "draft", bool, "release.draft")
    prerelease = _required(release, "prerelease", bool, "release.prerelease")
    release_id = _required(release, "id", int, "release.id")
    if repository is None:
        raise InvalidRequest("missing field repository.full_name")
    app = config.app_for_repository(repository)
    if app is None:
        raise UnknownApp(f"no app is configured for repository {repository}")

    base = dict(
        event=event,
        action=action,
        repository=repository,
        sender=sender,
        app=app.name,
        release_id=release_id,
        tag=tag if DOCKER_TAG_RE.fullmatch(tag) else None,
    )
    reason = _why_not(action, draft, prerelease, app)
    if reason is not None:
        return Decision("ignore", reason, **base)

    valid_tag(app, tag)
    published_at = _required(release, "published_at", str, "release.published_at")
    if not PUBLISHED_AT_RE.fullmatch(published_at):
        raise InvalidRequest("field release.published_at must be a UTC time like 2019-05-15T15:20:53Z")
    asset = None
    if app.asset is not None:
        asset = find_asset(release, app.asset.name)
        if asset is None:
            return Decision(
                "ignore",
                f"the release has no uploaded asset named {app.asset.name!r}, which app "
                f"{app.name!r} takes its image from",
                **base,
            )
    kind = "prerelease" if prerelease else "release"
    return Decision("deploy", f"{action} {kind} {tag}", asset=asset, published_at=published_at, **{**base, "tag": tag})


def _pong(payload: Mapping[str, Any], repository: str | None, sender: str | None, config: Config) -> Decision:
    """A ping: an organization's hook hears which repositories deploy here; a repository's, whether it does."""
    hook = payload.get("hook")
    organization_hook = (isinstance(hook, Mapping) and hook.get("type") == "Organization") or (
        isinstance(payload.get("organization"), Mapping) and repository is None
    )
    if organization_hook:
        deployed = tuple(sorted({app.repository for app in config.apps.values() if app.repository}))
        listed = ", ".join(deployed) if deployed else "none"
        return Decision(
            "pong",
            f"pong; an organization's hook: this server deploys repositories {listed}",
            "ping",
            repository=repository,
            sender=sender,
            repositories=deployed,
        )
    if repository is None:
        raise UnknownApp("the ping names no repository (repository.full_name) and is not an organization's hook")
    app = config.app_for_repository(repository)
    if app is None:
        raise UnknownApp(f"no app is configured for repository {repository}; this hook deploys nothing here")
    return Decision(
        "pong",
        f"pong; repository {repository} deploys app {app.name!r}",
        "ping",
        repository=repository,
        sender=sender,
        app=app.name,
    )


def _why_not(action: str, draft: bool, prerelease: bool, app: AppConfig) -> str | None:
    """None when the action deploys; else the reason it does not."""
    if action in IGNORED_ACTIONS:
        return f"action {action!r} is ignored: {IGNORED_ACTIONS[action]}"
    if action not in ("published", "released"):
        return f"action {action!r} is ignored: only 'published' and 'released' deploy"
    if draft:
        return "the release is a draft"
    if prerelease and not app.prereleases:
        return f"the release is a prerelease, and app {app.name!r} does not deploy prereleases (prereleases = false)"
    return None


def find_asset(release: Mapping[str, Any], name: str) -> AssetRef | None:
    """The uploaded asset called `name`, and its `<name>.sha256` companion when there is one."""
    assets = release.get("assets")
    if not isinstance(assets, list):
        return None
    by_name = {}
    for entry in assets:
        if (
            isinstance(entry, Mapping)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("id"), int)
            and not isinstance(entry.get("id"), bool)
            and entry.get("state", "uploaded") == "uploaded"
        ):
            by_name[entry["name"]] = entry
    image = by_name.get(name)
    if image is None:
        return None
    checksum = by_name.get(f"{name}.sha256")
    size = image.get("size")
    return AssetRef(
        asset_id=image["id"],
        name=name,
        size=size if isinstance(size, int) else None,
        checksum_id=checksum["id"] if checksum else None,
    )


def _repository(payload: Mapping[str, Any]) -> str | None:
    repository = payload.get("repository")
    if isinstance(repository, Mapping) and isinstance(repository.get("full_name"), str):
        return repository["full_name"]
    return None


def _optional_str(payload: Mapping[str, Any], key: str) -> str | None:
    value = payload.get(key)
    return value if isinstance(value, str) else None


def _required(data: Mapping[str, Any], key: str, kind: type, name: str | None = None) -> Any:
    name = name or key
    if key not in data or data[key] is None:
        raise InvalidRequest(f"missing field {name}")
    value = data[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        kinds = {str: "a string", bool: "true or false", int: "a whole number", Mapping: "an object"}
        raise InvalidRequest(f"field {name} must be {kinds[kind]}")
    return value
