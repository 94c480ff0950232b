"""A tag reaches Docker, hooks, logs and rule comments: only exact Docker tags pass."""

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping
from deployer.errors import InvalidTag
from deployer.plan.tags import check_tag

PORTS = (PortMapping(external=8000, container=80, protocol="tcp", blue=8001, green=8002),)
ANY = AppConfig(name="web", image="registry.example:5000/web", ports=PORTS, health=HealthCheck(type="tcp", port=80))
SEMVER = AppConfig(
    name="demo",
    image="127.0.0.1:5000/demo",
    ports=PORTS,
    health=HealthCheck(type="tcp", port=80),
    tag_pattern=r"^v[0-9]+(\.[0-9]+)*$",
)
PREFIX = AppConfig(
    name="api", image="127.0.0.1:5000/api", ports=PORTS, health=HealthCheck(type="tcp", port=80), tag_pattern=r"v[0-9]+"
)


@pytest.mark.parametrize("tag", ["v1", "latest", "1.2.3", "v2.0.0-rc.1", "main_2024-06-01", "_x", "A" * 128])
def test_valid_docker_tags_pass(tag):
    assert check_tag(ANY, tag) == tag


@pytest.mark.parametrize(
    ("tag", "shown"),
    [
        ("v1;rm -rf /", "'v1;rm -rf /'"),
        ("$(id)", "'$(id)'"),
        ("`id`", "'`id`'"),
        ("../x", "'../x'"),
        ("v1/../../etc", "'v1/../../etc'"),
        ("", "''"),
        ("-x", "'-x'"),
        (".x", "'.x'"),
        ("v 1", "'v 1'"),
        ("v1:latest", "'v1:latest'"),
        ("v1@sha256", "'v1@sha256'"),
        ("A" * 129, repr("A" * 129)[:60]),
        ("x" * 200, repr("x" * 200)[:60]),
        (None, "None"),
        (5, "5"),
        (["v1"], "['v1']"),
    ],
)
def test_hostile_tags_are_rejected(tag, shown):
    with pytest.raises(InvalidTag) as caught:
        check_tag(ANY, tag)
    assert str(caught.value) == f"{shown} is not a valid Docker tag"
    assert caught.value.exit_code == 2
    assert caught.value.context == {"app": "web"}


@pytest.mark.parametrize("tag", ["v1\n", "latest\n"])
def test_a_trailing_newline_is_rejected(tag):
    with pytest.raises(InvalidTag):
        check_tag(ANY, tag)


def test_tag_pattern_must_match_the_whole_tag():
    assert check_tag(SEMVER, "v1.2.3") == "v1.2.3"
    assert check_tag(PREFIX, "v12") == "v12"
    for app, tag in ((SEMVER, "v1.2.3-rc1"), (SEMVER, "latest"), (PREFIX, "v1abc"), (PREFIX, "xv1")):
        with pytest.raises(InvalidTag) as caught:
            check_tag(app, tag)
        assert str(caught.value) == f"tag {tag!r} does not match the pattern of app {app.name!r}: {app.tag_pattern}"
        assert caught.value.context == {"app": app.name, "tag": tag}
    assert (
        str(pytest.raises(InvalidTag, check_tag, PREFIX, "v1abc").value)
        == "tag 'v1abc' does not match the pattern of app 'api': v[0-9]+"
    )


def test_a_pattern_keeps_a_trailing_newline_out():
    with pytest.raises(InvalidTag):
        check_tag(SEMVER, "v1\n")


def test_the_docker_grammar_is_checked_before_the_pattern():
    with pytest.raises(InvalidTag) as caught:
        check_tag(
            AppConfig(name="x", image="x", ports=PORTS, health=HealthCheck(type="tcp", port=80), tag_pattern=".*"),
            "$(id)",
        )
    assert str(caught.value) == "'$(id)' is not a valid Docker tag"
