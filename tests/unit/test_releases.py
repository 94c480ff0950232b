"""The release policy, driven by GitHub's real payloads (tests/fixtures/github/)."""

import copy
import json
import tomllib
from pathlib import Path

import pytest

from deployer import config as config_module
from deployer.errors import InvalidRequest, InvalidTag, UnknownApp
from deployer.receiver import releases
from deployer.receiver.releases import AssetRef, Decision
from support.configs import app_toml
from support.github_payloads import PAYLOADS


def payload(name: str, **release_changes) -> dict:
    data = json.loads((PAYLOADS / name).read_text())
    data.get("release", {}).update(release_changes)
    return data


PUBLISHED = "release-published.payload.json"
RELEASED = "release-released.json"
PRERELEASED = "release-prereleased.payload.json"
PING = "ping-payload.json"


def app_config(prereleases: bool = False, tag_pattern: str | None = None, asset: bool = False):
    """The app `web` alone, with its release policy."""
    policy = {"prereleases": prereleases, **({"tag_pattern": tag_pattern} if tag_pattern else {})}
    asset_table = '[apps.web.asset]\nname = "image.tar"' if asset else ""
    text = app_toml("web", 8000, repository="Codertocat/Hello-World", extra=asset_table, **policy)
    return config_module.parse(tomllib.loads(text), path=Path("/etc/deployer/deployer.toml"), environ={})


BASE = dict(
    event="release",
    repository="Codertocat/Hello-World",
    sender="Codertocat",
    app="web",
    release_id=17372790,
    tag="0.0.1",
)


def test_published_release_deploys():
    assert releases.decide("release", payload(PUBLISHED), app_config()) == Decision(
        "deploy", "published release 0.0.1", action="published", published_at="2019-05-15T15:20:53Z", **BASE
    )


def test_released_deploys_as_well_and_the_queue_makes_it_one_deploy():
    assert releases.decide("release", payload(RELEASED), app_config()) == Decision(
        "deploy", "released release 0.0.1", action="released", published_at="2019-05-15T15:20:53Z", **BASE
    )


def test_a_prerelease_is_ignored_unless_the_app_opts_in():
    prerelease = payload(PUBLISHED, prerelease=True)
    assert releases.decide("release", prerelease, app_config()) == Decision(
        "ignore",
        "the release is a prerelease, and app 'web' does not deploy prereleases (prereleases = false)",
        action="published",
        **BASE,
    )
    assert releases.decide("release", prerelease, app_config(prereleases=True)) == Decision(
        "deploy", "published prerelease 0.0.1", action="published", published_at="2019-05-15T15:20:53Z", **BASE
    )


def test_the_prereleased_action_defers_to_published():
    # GitHub's real 'prereleased' payload: GitHub also sends 'published' for the same release.
    decision = releases.decide("release", payload(PRERELEASED), app_config(prereleases=True))
    assert (decision.verdict, decision.reason) == (
        "ignore",
        "action 'prereleased' is ignored: the 'published' delivery of the same release decides whether "
        "a prerelease deploys",
    )


def test_a_promoted_prerelease_deploys_on_released():
    # When a prerelease becomes a full release GitHub sends 'released' with prerelease false.
    assert releases.decide("release", payload(RELEASED), app_config(prereleases=False)).verdict == "deploy"


def test_drafts_never_deploy():
    decision = releases.decide("release", payload(PUBLISHED, draft=True), app_config(prereleases=True))
    assert (decision.verdict, decision.reason) == ("ignore", "the release is a draft")


@pytest.mark.parametrize(
    "action, reason",
    [
        ("created", "action 'created' is ignored: a created release is a draft or is followed by 'published'"),
        ("edited", "action 'edited' is ignored: editing a release does not deploy it"),
        ("deleted", "action 'deleted' is ignored: deleting a release does not deploy anything"),
        (
            "unpublished",
            "action 'unpublished' is ignored: unpublishing does not deploy anything "
            "(roll back with `deployer rollback` if needed)",
        ),
        ("renamed", "action 'renamed' is ignored: only 'published' and 'released' deploy"),
    ],
)
def test_other_actions_are_acknowledged_with_a_reason(action, reason):
    data = payload(PUBLISHED)
    data["action"] = action
    assert releases.decide("release", data, app_config()) == Decision("ignore", reason, action=action, **BASE)


def test_a_ping_from_a_repository_no_app_claims_is_refused_404():
    with pytest.raises(UnknownApp) as refused:
        releases.decide("ping", payload(PING), app_config())
    assert str(refused.value) == (
        "no app is configured for repository Octocoders/Hello-World; this hook deploys nothing here"
    )


def test_a_ping_from_a_repository_an_app_claims_answers_pong():
    ping = payload(PING)
    ping["repository"]["full_name"] = "codertocat/hello-world"  # GitHub names are case-insensitive
    assert releases.decide("ping", ping, app_config()) == Decision(
        "pong",
        "pong; repository codertocat/hello-world deploys app 'web'",
        "ping",
        repository="codertocat/hello-world",
        sender="Codertocat",
        app="web",
    )


def organization_ping(**hook_changes) -> dict:
    ping = payload(PING)
    del ping["repository"]
    ping["organization"] = {"login": "Octocoders", "id": 38302899}
    ping["hook"].update(type="Organization", **hook_changes)
    return ping


@pytest.mark.parametrize(
    "shape",
    ["organization, no repository", "hook type Organization", "hook type Organization, repository named"],
)
def test_an_organization_hook_ping_lists_the_repositories_this_server_deploys(shape):
    ping = organization_ping()
    if shape == "organization, no repository":
        ping["hook"]["type"] = "Repository"
    if shape == "hook type Organization":
        del ping["organization"]
    if shape == "hook type Organization, repository named":
        ping["repository"] = {"full_name": "Octocoders/Other"}
    decision = releases.decide("ping", ping, app_config())
    assert (decision.verdict, decision.reason, decision.repositories) == (
        "pong",
        "pong; an organization's hook: this server deploys repositories Codertocat/Hello-World",
        ("Codertocat/Hello-World",),
    )


def test_a_ping_that_names_no_repository_and_no_organization_is_refused_404():
    ping = payload(PING)
    del ping["repository"]
    with pytest.raises(UnknownApp, match="names no repository"):
        releases.decide("ping", ping, app_config())


def test_other_events_are_ignored():
    decision = releases.decide("push", payload(PUBLISHED), app_config())
    assert (decision.verdict, decision.reason) == ("ignore", "event 'push' is not acted on; only 'release' deploys")


def test_an_unconfigured_repository_is_refused():
    data = payload(PUBLISHED)
    data["repository"]["full_name"] = "someone/else"
    with pytest.raises(UnknownApp) as caught:
        releases.decide("release", data, app_config())
    assert str(caught.value) == "no app is configured for repository someone/else"


@pytest.mark.parametrize(
    "path, message",
    [
        (("action",), "missing field action"),
        (("release",), "missing field release"),
        (("release", "tag_name"), "missing field release.tag_name"),
        (("release", "draft"), "missing field release.draft"),
        (("release", "prerelease"), "missing field release.prerelease"),
        (("release", "id"), "missing field release.id"),
        (("repository",), "missing field repository.full_name"),
        (("repository", "full_name"), "missing field repository.full_name"),
    ],
)
def test_missing_fields_are_named(path, message):
    data = payload(PUBLISHED)
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(InvalidRequest) as caught:
        releases.decide("release", data, app_config())
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tag_name", 1, "field release.tag_name must be a string"),
        ("draft", "false", "field release.draft must be true or false"),
        ("id", True, "field release.id must be a whole number"),
    ],
)
def test_fields_of_the_wrong_type_are_named(field, value, message):
    with pytest.raises(InvalidRequest) as caught:
        releases.decide("release", payload(PUBLISHED, **{field: value}), app_config())
    assert str(caught.value) == message


@pytest.mark.parametrize("tag", ["v1;rm -rf /", "$(id)", "../x", "a" * 200, "v1\n", "-v1", ""])
def test_hostile_tags_are_refused(tag):
    with pytest.raises(InvalidTag):
        releases.decide("release", payload(PUBLISHED, tag_name=tag), app_config())


def test_a_tag_outside_the_apps_pattern_is_refused():
    with pytest.raises(InvalidTag) as caught:
        releases.decide("release", payload(PUBLISHED), app_config(tag_pattern=r"^v[0-9.]+$"))
    assert str(caught.value) == "tag '0.0.1' does not match the pattern of app 'web': ^v[0-9.]+$"


def test_a_hostile_tag_in_an_ignored_action_is_not_echoed_into_the_decision():
    decision = releases.decide("release", payload(PUBLISHED, tag_name="$(id)", draft=True), app_config())
    assert (decision.verdict, decision.tag) == ("ignore", None)


def test_the_sender_is_reduced_to_login_characters():
    data = payload(PUBLISHED)
    data["sender"]["login"] = "evil\nlogin [bot]"
    assert releases.decide("release", data, app_config()).sender == "evillogin[bot]"
    assert releases.decide("release", data, app_config()).actor == "github:evillogin[bot]"
    del data["sender"]
    assert releases.decide("release", data, app_config()).actor == "github:unknown"


def test_an_asset_app_takes_the_asset_ids_from_the_release():
    assets = [
        {"id": 11, "name": "image.tar", "size": 5000, "state": "uploaded"},
        {"id": 12, "name": "image.tar.sha256", "size": 80, "state": "uploaded"},
        {"id": 13, "name": "notes.txt", "size": 1, "state": "uploaded"},
    ]
    decision = releases.decide("release", payload(PUBLISHED, assets=assets), app_config(asset=True))
    assert decision.asset == AssetRef(asset_id=11, name="image.tar", size=5000, checksum_id=12)


def test_an_asset_app_ignores_a_release_without_the_asset():
    # The real payload has no assets; a half-uploaded asset does not count either.
    decision = releases.decide("release", payload(PUBLISHED), app_config(asset=True))
    assert (decision.verdict, decision.reason) == (
        "ignore",
        "the release has no uploaded asset named 'image.tar', which app 'web' takes its image from",
    )
    starting = [{"id": 11, "name": "image.tar", "size": 5000, "state": "starter"}]
    assert releases.decide("release", payload(PUBLISHED, assets=starting), app_config(asset=True)).verdict == "ignore"


def test_the_payload_is_not_changed():
    data = payload(PUBLISHED)
    before = copy.deepcopy(data)
    releases.decide("release", data, app_config())
    assert data == before
