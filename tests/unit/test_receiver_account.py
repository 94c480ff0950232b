"""The receiver's account: [server] user and group looked up on the host, with one error naming the fix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deployer.config import ServerConfig
from deployer.config.accounts import ROOT_WARNING, Account, receiver_account, root_warning
from deployer.errors import MissingAccount

USERS = {"deployer": (998, 997), "root": (0, 0), "www": (33, 33)}
GROUPS = {"deployer": 997, "root": 0, "www-data": 33, "web": 1200}


def lookups() -> dict:
    """pwd and grp as a host with a `deployer` user would answer, by name and by id."""

    def user_by_name(name):
        uid, gid = USERS[name]
        return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)

    def group_by_name(name):
        return SimpleNamespace(gr_name=name, gr_gid=GROUPS[name])

    def group_by_id(gid):
        [name] = [name for name, found in GROUPS.items() if found == gid]
        return SimpleNamespace(gr_name=name, gr_gid=gid)

    return {"user_by_name": user_by_name, "group_by_name": group_by_name, "group_by_id": group_by_id}


@pytest.mark.parametrize(
    ("server", "account"),
    [
        (ServerConfig(), Account("deployer", 998, "deployer", 997)),  # the default: setup's user, its group
        (ServerConfig(user="www"), Account("www", 33, "www-data", 33)),  # the user's primary group
        (ServerConfig(user="www", group="web"), Account("www", 33, "web", 1200)),  # the group named
        (ServerConfig(user="root"), Account("root", 0, "root", 0)),
    ],
)
def test_the_receiver_runs_as_the_user_named_with_its_primary_group_unless_one_is_named(server, account):
    assert receiver_account(server, **lookups()) == account
    assert account.is_root == (server.user == "root")


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            ServerConfig(),
            "the receiver's user 'deployer' ([server] user) does not exist on this host: create it "
            "with `deployer setup`, or set [server] user to an existing unprivileged user",
        ),
        (ServerConfig(user="www", group="nope"), "the receiver's group 'nope' ([server] group) does not exist"),
    ],
)
def test_a_missing_account_is_one_error_that_names_the_fix(server, message):
    found = lookups()
    if server.user == "deployer":
        found["user_by_name"] = lambda name: (_ for _ in ()).throw(KeyError(name))
    with pytest.raises(MissingAccount) as error:
        receiver_account(server, **found)
    assert str(error.value).startswith(message)


def test_only_an_explicit_root_receiver_is_warned_about():
    assert root_warning(ServerConfig(user="root")) == ROOT_WARNING
    assert "deployer setup" in ROOT_WARNING
    assert root_warning(ServerConfig()) is None
    assert root_warning(ServerConfig(user="www")) is None
